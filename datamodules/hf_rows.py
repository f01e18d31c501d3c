"""Rows of a Hugging Face ``datasets`` split, read one at a time: the row sources of the ``hf`` reader.

- :class:`ShardedStream`: a stream (``datasets.load_dataset(..., streaming=True)``) cut into its shards. When the
  row count of every shard is known (parquet on disk: the row groups, from the file footers), row ``i`` is row
  ``o`` of shard ``s`` and only shard ``s`` is opened to read it, so a DataLoader worker opens only the shards that
  hold the rows its batches ask for, never the whole stream. Within a shard a forward cursor serves rows in order
  (one pass); going back reopens the shard. A hub stream whose shard sizes are not published is one shard: its
  rows are read through a single cursor (each worker then passes over the rows before its own, undecoded).
- :class:`TableRows`: a ``save_to_disk`` folder or ``.arrow`` files, memory-mapped by ``datasets``: true random
  access, each worker touches only its rows.

Images are never decoded by ``datasets`` here (``decode(False)`` / arrow rows): cells stay encoded bytes, and the
reader decodes them with the suite's own checks. The sample order is the stream's, whatever the number of workers.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from datamodules.contract import DataError


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


class ShardedStream:
    """Rows of a ``datasets`` stream, shard by shard (see the module docstring).

    ``open_stream`` returns the whole stream (called lazily, once per process); ``shard_rows`` the row count of
    each of its shards in order (None: unknown, the stream is read as one shard of ``length`` rows).
    """

    def __init__(self, open_stream: Callable[[], Any], shard_rows: Sequence[int] | None, where: str,
                 length: int | None = None) -> None:
        self.open_stream, self.where = open_stream, where
        self.shard_rows = list(shard_rows) if shard_rows is not None else None
        if self.shard_rows is not None:
            self.starts = [0]
            for n in self.shard_rows:
                self.starts.append(self.starts[-1] + n)
            self.length = self.starts[-1]
        elif length is None:
            raise DataError(f"{where}: the number of rows is unknown; set option 'limit'")
        else:
            self.starts, self.length = [0, length], length
        self._stream: Any = None
        self._cursor: Any = None
        self._shard, self._pos = -1, 0
        self.shards_opened: list[int] = []  # in this process, in order (what the worker tests look at)

    @property
    def sharded(self) -> bool:
        return self.shard_rows is not None and len(self.shard_rows) > 1

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict[str, Any]:
        # A live stream cannot be pickled (DataLoader workers): each copy opens its own.
        return {**self.__dict__, "_stream": None, "_cursor": None, "_shard": -1, "_pos": 0, "shards_opened": []}

    def _open(self, shard: int, offset: int) -> None:
        if self._stream is None:
            self._stream = self.open_stream()
        stream = self._stream
        if self.sharded:
            stream = stream.shard(num_shards=len(self.shard_rows), index=shard, contiguous=True)
        stream = stream.skip(offset) if offset else stream
        # iter(batch_size=1), not iter(stream): inside a DataLoader worker the latter splits the stream among the
        # workers itself, while here the loader's sampler already decides which rows this worker reads.
        rows = ({k: v[0] for k, v in batch.items()} for batch in stream.iter(batch_size=1))
        self._cursor, self._shard, self._pos = rows, shard, offset
        self.shards_opened.append(shard)

    def row(self, index: int) -> dict[str, Any]:
        shard = bisect.bisect_right(self.starts, index) - 1 if self.sharded else 0
        offset = index - self.starts[shard]
        if self._cursor is None or shard != self._shard or offset < self._pos:
            self._open(shard, offset)
        try:
            while self._pos < offset:
                next(self._cursor)
                self._pos += 1
            row = next(self._cursor)
        except StopIteration:
            raise DataError(f"{self.where}: shard {shard} ended before its row {offset}; expected "
                            f"{self.starts[shard + 1] - self.starts[shard]} rows in it") from None
        self._pos += 1
        return row


def parquet_row_groups(files: Sequence[Path]) -> list[int]:
    """Row count of every row group of ``files``, in file order (from the footers only)."""
    import pyarrow.parquet as pq

    counts = []
    for path in files:
        try:
            meta = pq.ParquetFile(path).metadata
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError... for a damaged file
            raise DataError(f"{path}: not a readable parquet file ({e})") from e
        counts += [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    return counts


def parquet_stream(files: Sequence[Path], where: str) -> ShardedStream:
    """Local parquet files streamed through ``datasets``, one shard per row group."""
    groups = parquet_row_groups(files)
    return ShardedStream(partial(_open_parquet, [str(f) for f in files], len(groups), where), groups, where)


def _open_parquet(names: list[str], num_groups: int, where: str) -> Any:
    import datasets

    stream = datasets.load_dataset("parquet", data_files=names, split="train", streaming=True)
    stream = stream.reshard().decode(False)
    if stream.num_shards != num_groups:  # reshard is per row group for parquet; anything else is a surprise
        raise DataError(f"{where}: the stream has {stream.num_shards} shards but the files have {num_groups} "
                        "row groups")
    return stream


def _offline() -> bool:
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def hub_stream(repo: str, config: str | None, split: str, revision: str | None, limit: int | None) -> ShardedStream:
    """A hub dataset streamed by name (``datasets.load_dataset(repo, config, split=split, streaming=True)``).

    The stream is opened once here, to learn its length (the split's ``num_examples`` in the dataset's card) and
    shard sizes (``shard_lengths``, where published); a dataset that gives neither needs ``limit``.
    """
    where = f"hub dataset {repo!r}" + (f" config {config!r}" if config else "") + f" split {split!r}"
    stream = open_hub(repo, config, split, revision, where)
    info = (stream.info.splits or {}).get(split) if stream.info is not None else None
    lengths = list(info.shard_lengths or []) if info is not None else []
    total = info.num_examples if info is not None and info.num_examples else None
    reopen = partial(open_hub, repo, config, split, revision, where)
    if lengths and len(lengths) == stream.num_shards and sum(lengths) == (total or sum(lengths)):
        source = ShardedStream(reopen, lengths, where)
    else:
        source = ShardedStream(reopen, None, where, total if total is not None else limit)
    source._stream = stream  # already open in this process
    return source


def open_hub(repo: str, config: str | None, split: str, revision: str | None, where: str) -> Any:
    import datasets

    try:
        stream = datasets.load_dataset(repo, config, split=split, streaming=True, revision=revision)
    except Exception as e:  # datasets raises many kinds (not found, offline, unknown config or split)
        hint = (" (HF_DATASETS_OFFLINE=1 and it is not in the local cache: run once online, or point option "
                "'dataset' at a save_to_disk folder or option 'data_files' at parquet files)") if _offline() else ""
        raise DataError(f"{where}: cannot open the stream{hint}; {_one_line(e)}") from None
    return stream.decode(False)


class TableRows:
    """A ``save_to_disk`` folder (a Dataset, or a DatasetDict holding ``split``) or ``.arrow`` files, memory-mapped."""

    def __init__(self, paths: Sequence[Path], split: str, where: str, folder: bool) -> None:
        self.paths, self.split, self.where, self.folder = list(paths), split, where, folder
        self._table: Any = None
        self.length = len(self.table())

    def table(self) -> Any:
        if self._table is None:
            import datasets

            try:
                if self.folder:
                    ds = datasets.load_from_disk(str(self.paths[0]))
                    if isinstance(ds, datasets.DatasetDict):
                        if self.split not in ds:
                            raise DataError(f"{self.where}: the saved DatasetDict has splits {sorted(ds)}; no "
                                            f"split {self.split!r}")
                        ds = ds[self.split]
                else:
                    ds = datasets.concatenate_datasets([datasets.Dataset.from_file(str(p)) for p in self.paths])
            except DataError:
                raise
            except Exception as e:  # a damaged or foreign folder
                raise DataError(f"{self.where}: not a readable datasets folder or arrow file ({_one_line(e)})") from e
            self._table = ds.with_format("arrow")
        return self._table

    @property
    def features(self) -> Any:
        return self.table().features

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_table": None}  # each process maps the files itself

    def row(self, index: int) -> dict[str, Any]:
        return self.table()[index].to_pylist()[0]
