"""The file names of a checkpoint folder (what each file holds: :mod:`phenoclip.checkpoint`)."""

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.safetensors"
#: statistics the inputs were scaled with in training (per-gene expression mean/std), so a later
#: step on another cohort scales its data the same way
DATA_STATS_FILE = "data_stats.safetensors"
#: the write-ahead journal of a checkpoint being moved into place
JOURNAL_FILE = ".commit"
