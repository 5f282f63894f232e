"""The ``retrieve`` step (see docs/architecture.md)."""
