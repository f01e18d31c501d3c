"""Errors the user can act on. Each message names what was given and what was expected."""


class ConfigError(ValueError):
    """A bad name or value in the run configuration (sequence, method, model, an override)."""


class MemoryMismatchError(ValueError):
    """A saved memory that does not fit the embedder or dimension of the current run."""
