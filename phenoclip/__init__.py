"""phenoclip: multimodal self-supervised pretraining on patient data.

The package imports nothing heavy at import time: ``phenoclip --help`` must stay fast
because HPC batch scripts call the CLI many times.
"""

__version__ = "0.1.0"
