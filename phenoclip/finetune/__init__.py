"""The ``finetune`` step (see docs/architecture.md)."""
