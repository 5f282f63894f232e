"""The ``pretrain`` step (see docs/architecture.md)."""
