"""The training side: from a dataset to a scored bundle (docs/ARCHITECTURE.md)."""
