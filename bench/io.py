"""Atomic file writes, checksummed state files, the run-folder lock and the cache directory.

A crash never leaves half a file under its final name; an OS error names the file the caller meant to write (not a
temporary name) and says what was being done (``action``), so the command line can print it as one line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.errors import DamagedStateError, RunInUseError, first_line
from datamodules.paths import cache_dir

log = logging.getLogger("bench")

__all__ = ["atomic_dir", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "cache_dir",
           "check_writable", "lock_dir", "make_dirs", "os_error", "read_cache", "read_state_bytes", "sha256_file",
           "verify_sidecar", "write_sidecar", "write_state_bytes"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def os_error(e: OSError, path: str | Path, action: str = "cannot write") -> OSError:
    """``e`` again (same errno, so the same subclass), naming ``path`` and carrying ``action`` for the message."""
    named = OSError(e.errno, e.strerror or str(e), str(path)) if e.errno is not None else OSError(str(e))
    if e.errno is None:
        named.filename, named.strerror = str(path), str(e)
    named.action = action  # type: ignore[attr-defined]
    return named


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(e, OSError) and not hasattr(e, "action"):
            raise os_error(e, path) from e
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n")


def make_dirs(path: str | Path, action: str = "cannot create folder") -> None:
    """``mkdir -p path``; a file in the way is named as such (mkdir would only say "File exists")."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise os_error(NotADirectoryError(errno.ENOTDIR, f"{folder} is a file, not a folder"), path, action)
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(e, path, action) from e


def check_writable(path: str | Path, name: str = "") -> Path:
    """Refuse, before any work, an output ``path`` that is a folder or whose folder cannot take a new file.

    ``name`` (e.g. ``--out``) is how the user gave the path; errors say ``cannot write <name> <path>: <why>``."""
    path = Path(path)
    action = f"cannot write {name}".strip()
    if path.is_dir():
        raise os_error(IsADirectoryError(errno.EISDIR, f"is a folder; give a file name such as "
                                                       f"{path / 'result.json'}"), path, action)
    if path.parent.exists() and not path.parent.is_dir():
        raise os_error(NotADirectoryError(errno.ENOTDIR, f"{path.parent} is a file, not a folder"), path, action)
    make_dirs(path.parent, action)
    try:
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise os_error(e, path, action) from e
    return path


# -- checksummed state ------------------------------------------------------------------------------------------
def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_sidecar(path: str | Path, digest: str | None = None) -> None:
    """Write ``<path>.sha256`` (``<hex>  <name>``, sha256sum's format) after ``path`` itself is complete."""
    path = Path(path)
    atomic_write_text(_sidecar(path), f"{digest or sha256_file(path)}  {path.name}\n")


def verify_sidecar(path: str | Path, data: bytes | None = None) -> None:
    """Raise :class:`DamagedStateError` when ``path`` (or its bytes ``data``) differs from ``<path>.sha256``.

    A file saved before checksums were written has no sidecar and is accepted as it is."""
    path = Path(path)
    try:
        expected = _sidecar(path).read_text().split()
    except FileNotFoundError:
        return
    except OSError as e:
        raise DamagedStateError(path, f"its checksum file cannot be read: {e.strerror}") from e
    try:
        found = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(path)
    except OSError as e:
        raise DamagedStateError(path, f"cannot be read: {e.strerror}") from e
    if not expected or found != expected[0]:
        raise DamagedStateError(path, "checksum mismatch")


def write_state_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` atomically, then its checksum sidecar (an old sidecar goes first: a crash in between leaves
    a file without one, accepted as it is, never a file with a wrong one)."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        _sidecar(path).unlink()
    atomic_write_bytes(path, data)
    write_sidecar(path, hashlib.sha256(data).hexdigest())


def read_state_bytes(path: str | Path) -> bytes:
    """The bytes of a file written by :func:`write_state_bytes`, checked against its sidecar."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DamagedStateError(path, f"cannot be read: {e.strerror}") from e
    verify_sidecar(path, data)
    return data


# -- folders ----------------------------------------------------------------------------------------------------
def _swap_in(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``, replacing a folder there. Safe when other processes or threads replace the same
    folder at once: whatever is in the way is renamed aside to a unique name (never deleted in place, which races
    with another writer's rename), and the rename is retried; the last writer wins, always with a whole folder."""
    aside: list[Path] = []
    try:
        for _ in range(10_000):
            try:
                os.rename(tmp, path)
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            try:
                os.rename(path, old)  # an empty folder is replaced by the rename
                aside.append(old)
            except FileNotFoundError:  # another writer moved it first
                os.rmdir(old)
        raise OSError(errno.EBUSY, "replaced by other writers 10000 times in a row", str(path))
    finally:
        for old in aside:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` when the block ends without error."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as e:
        raise os_error(e, path) from e
    try:
        yield tmp
        _swap_in(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not hasattr(e, "action"):
            raise os_error(e, e.filename if e.filename and not str(e.filename).startswith(str(tmp)) else path) \
                from e
        raise


@contextlib.contextmanager
def lock_dir(path: str | Path) -> Iterator[None]:
    """Hold an advisory lock on folder ``path`` (``flock`` on ``<path>/.lock``, non-blocking) for the block.

    The lock file keeps the holder's pid and start time for the message another process gets
    (:class:`RunInUseError`). The lock goes with the process: a killed run leaves no stale lock."""
    path = Path(path)
    lock = path / ".lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    except OSError as e:
        raise os_error(e, lock) from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = [*lock.read_text(errors="replace").split(" ", 1), "?"]
            pid, started = holder[0].strip() or "?", holder[1].strip() or "?"
            raise RunInUseError(f"{path} is in use by process {pid} (started {started}); wait for it or choose "
                                "another RUN_ID") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        except OSError as e:
            raise os_error(e, lock) from e
        yield
    finally:
        os.close(fd)  # releases the lock


def read_cache(path: str | Path, what: str, keys: tuple[str, ...] = ()) -> Any:
    """A torch-saved cache file written by :func:`write_state_bytes`, or None when there is none or it is damaged
    (then a line is logged and the caller recomputes and overwrites it). ``keys`` must be in the loaded dict."""
    import io

    import torch

    path = Path(path)
    if not path.exists():
        return None
    try:
        cached = torch.load(io.BytesIO(read_state_bytes(path)), weights_only=True)
        missing = [k for k in keys if k not in cached]
        if missing:
            raise DamagedStateError(path, f"cannot be read: no {', '.join(missing)}")
    except DamagedStateError as e:
        log.warning("%s %s: rebuilding it", what, e)
        return None
    except Exception as e:  # torch reports a truncated file in many ways (PytorchStreamReader, EOF, unpickling)
        log.warning("%s %s: rebuilding it", what, DamagedStateError(path, f"cannot be read: {first_line(e)}"))
        return None
    return cached


def read_state_json(file: Path, keys: set[str], what: str) -> dict[str, Any]:
    """A saved state's metadata file: a JSON object holding at least ``keys``; a :class:`DamagedStateError`
    naming the file otherwise (``what``: what it should be the metadata of)."""
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError as e:
        raise DamagedStateError(file, "cannot be read: it is missing") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedStateError(file, f"cannot be read: {e}") from e
    if not isinstance(meta, dict) or not keys <= set(meta):
        raise DamagedStateError(file, f"cannot be read: not the metadata of {what}")
    return meta
