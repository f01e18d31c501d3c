"""Errors the user can act on. Each message names what was given and what was expected."""


class ConfigError(ValueError):
    """A bad name or value in the run configuration (sequence, method, model, an override)."""


class MemoryMismatchError(ValueError):
    """A saved memory that does not fit the embedder or dimension of the current run."""


class WeightsUnavailable(RuntimeError):
    """Pretrained weights that cannot be had (offline, unknown on the hub, changed in-repo files); never replaced
    by random ones. The message is one line."""


class RunInUseError(RuntimeError):
    """A run folder locked by another live process (``<run dir>/.lock``)."""


class DamagedStateError(RuntimeError):
    """A saved file that fails its checksum or cannot be read. ``path`` is the damaged file, ``reason`` what is
    wrong; for run state, ``state`` (the file or folder of step ``step`` to delete) turns the message into advice."""

    def __init__(self, path: object, reason: str, state: object = None, step: int | None = None) -> None:
        self.path, self.reason, self.state, self.step = path, reason, state, step
        super().__init__(str(path))

    def __str__(self) -> str:
        text = f"{self.path} is damaged ({self.reason})"
        if self.state is not None and self.step is not None:
            text += (f": delete {self.state} (and later steps) to recompute from step {self.step}, or rerun with "
                     f"--recompute-from {self.step}")
        return text


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (libraries chain several lines of context)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
