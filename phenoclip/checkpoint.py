"""Checkpoint directories: ``model.safetensors`` + ``config.json`` + ``state.json`` + ``optimizer.pt``.

* ``model.safetensors``: every parameter and buffer (safetensors: no code runs on load).
* ``config.json``: the resolved configuration, enough to rebuild the model with no other input.
* ``state.json``: progress (epoch, step, history), the patient split, numpy/python RNG states.
* ``optimizer.pt``: optimizer and scheduler state, loaded with ``torch.load(weights_only=True)``
  so a tampered file cannot execute code.
* ``rng.safetensors``: torch RNG states, so a resumed run draws the same masks and dropout.

A checkpoint appears whole or not at all (a write-ahead journal; the files keep their names so
scripts can read ``DIR/model.safetensors``):

1. every file is written and flushed to disk in ``DIR/.tmp-PID``;
2. ``DIR/.commit`` (naming that folder and its files) is written atomically: from here on the
   new checkpoint is the committed one;
3. the files are moved into place one by one, then the journal and the folder are removed.

A kill before step 2 leaves the previous checkpoint intact (the stale folder is removed by the
next reader); a kill during step 3 leaves a journal, and the next reader of the checkpoint
(:func:`~phenoclip.checkpoint_save.recover`, called by every loader) finishes the moves first.
Either way a reader sees the old checkpoint or the new one, never files of two epochs.

The contract is kept in four modules: :mod:`phenoclip.checkpoint_files` (the file names),
:mod:`phenoclip.checkpoint_rng` (the RNG states), :mod:`phenoclip.checkpoint_save` (the journal,
:func:`recover`) and :mod:`phenoclip.checkpoint_load` (building and loading). This module hands
on the names most callers use.
"""

from phenoclip.checkpoint_files import CONFIG_FILE, MODEL_FILE
from phenoclip.checkpoint_load import (
    build_checked,
    load_weights,
    read_config,
    read_data_stats,
    read_state,
    split_of,
)
from phenoclip.checkpoint_save import save_checkpoint, write_data_stats

__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "build_checked",
    "load_weights",
    "read_config",
    "read_data_stats",
    "read_state",
    "save_checkpoint",
    "split_of",
    "write_data_stats",
]
