"""Registries: every family users extend (readers here; methods, bases, embedders, proposers, index kinds in
``bench``) is one :class:`Registry` filled by one decorator. Adding an entry is adding a module to the family's
package: the registry imports every module of its packages on first lookup, so no list is edited by hand."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from datamodules.contract import DataError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str
    module: str = ""  # the module that registered it (orders the listing)


def _first_line(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0].rstrip(".") if doc else ""


class Registry(Generic[T]):
    """Named entries of one family. ``key`` is the config key that selects one (named in errors); ``packages``
    are imported module by module before the first lookup so that their entries register themselves."""

    def __init__(self, family: str, key: str, packages: Iterable[str], error: type[Exception] = DataError) -> None:
        self.family, self.key, self.packages, self.error = family, key, tuple(packages), error
        self._entries: dict[str, Entry[T]] = {}
        self._modules: list[str] = []  # discovery order
        self._discovered = self._discovering = False

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` on a class or function; the description defaults to the
        object's ``description`` attribute, else the first line of its docstring."""

        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name].obj is not obj:
                raise ValueError(f"{self.family} {name!r} is registered twice")
            text = description or getattr(obj, "description", "") or _first_line(obj)
            module = sys._getframe(1).f_globals.get("__name__", "")
            self._entries[name] = Entry(name, obj, text, module)
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a toy entry take it out again)."""
        self._entries.pop(name, None)

    def discover(self) -> None:
        if self._discovered or self._discovering:
            return
        self._discovering = True  # a module importing another of the family during discovery
        try:
            self._import_packages()
            self._discovered = True  # only once every module imported: a failed import fails the next lookup too
        finally:
            self._discovering = False

    def _import_packages(self) -> None:
        self._modules = []
        for package in self.packages:
            pkg = importlib.import_module(package)
            for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
                if not info.name.startswith("_"):
                    self._modules.append(f"{package}.{info.name}")
                    importlib.import_module(self._modules[-1])

    def entries(self) -> dict[str, Entry[T]]:
        """Every entry, in package and module order (whatever order the modules happened to be imported in),
        entries registered from elsewhere (a test) last."""
        self.discover()
        rank = {m: i for i, m in enumerate(self._modules)}
        ordered = sorted(self._entries.values(), key=lambda e: rank.get(e.module, len(rank)))  # stable
        return {e.name: e for e in ordered}

    def names(self) -> list[str]:
        return list(self.entries())

    def __contains__(self, name: str) -> bool:
        return name in self.entries()

    def get(self, name: str) -> T:
        entries = self.entries()
        if name not in entries:
            close = difflib.get_close_matches(name, entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.error(f"unknown {self.family} {name!r} ({self.key}){hint}; expected one of: "
                             f"{', '.join(entries)}")
        return entries[name].obj


class Reader(Protocol):
    """A split of one dataset in its native format, read lazily one sample at a time.

    Built as ``Reader(root=Path, split=str, vocabulary=Vocabulary, **options)``; yields contract samples
    (see :mod:`datamodules.contract`) with class ids local to ``vocabulary``. A reader whose segments are real
    instances and stuff regions (not one segment per class) sets ``panoptic = True``, and PQ is scored on it.
    A reader may also set ``class_groups`` (group name -> class names of ``vocabulary``, e.g. LVIS rare / common
    / frequent); a run keeps it per task and the report gives each group's mean IoU.
    """

    panoptic: bool

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


READERS: Registry[Callable[..., Reader]] = Registry("dataset format", "format", ["datamodules"])


def register_reader(name: str, description: str = "") -> Callable[[type], type]:
    return READERS.register(name, description)


def get_reader(name: str) -> Callable[..., Reader]:
    return READERS.get(name)
