"""The ``segment`` step (see docs/architecture.md)."""
