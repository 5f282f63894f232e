"""Readers and writers of outside formats. Nothing here imports torch."""
