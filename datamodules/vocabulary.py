"""Vocabularies: ordered class names of one label space, each flagged thing or stuff."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from datamodules.contract import DataError

_FLAGS = {"thing": True, "stuff": False}


@dataclass(frozen=True)
class Vocabulary:
    """An ordered label space. Local class id ``i`` is ``classes[i]``."""

    name: str
    classes: tuple[str, ...]
    is_thing: tuple[bool, ...]

    def __post_init__(self) -> None:
        if not self.classes:
            raise DataError(f"vocabulary {self.name!r} is empty; expected at least one class")
        if len(self.classes) != len(self.is_thing):
            raise DataError(f"vocabulary {self.name!r}: {len(self.classes)} classes but "
                            f"{len(self.is_thing)} thing/stuff flags")
        seen: set[str] = set()
        for c in self.classes:
            if c in seen:
                raise DataError(f"vocabulary {self.name!r}: class {c!r} appears twice")
            seen.add(c)

    @classmethod
    def from_names(cls, name: str, classes: Sequence[str], things: Sequence[str] = ()) -> Vocabulary:
        thing_set = set(things)
        return cls(name, tuple(classes), tuple(c in thing_set for c in classes))

    @classmethod
    def from_file(cls, path: str | Path, name: str | None = None) -> Vocabulary:
        """Read a vocabulary file: one class per line, ``name<TAB>thing`` or ``name<TAB>stuff``.

        Blank lines and lines starting with ``#`` are skipped. Class names may contain spaces and commas. A
        UTF-8 byte-order mark and CRLF or CR line ends are read as plain text, so that a file saved by a Windows
        editor names the same classes (the mark would otherwise be part of the first class name).
        """
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except OSError as e:
            raise DataError(f"{path}: cannot read vocabulary file ({e.strerror})") from e
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: vocabulary file is not UTF-8 text (byte {e.start}: {e.reason})") from e
        classes, flags = [], []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split("\t")
            if len(parts) != 2 or parts[1].strip() not in _FLAGS or not parts[0].strip():
                raise DataError(f"{path}:{lineno}: expected 'class name<TAB>thing|stuff', got {line!r}")
            classes.append(parts[0].strip())
            flags.append(_FLAGS[parts[1].strip()])
        if not classes:
            raise DataError(f"{path}: vocabulary is empty; expected one class per line as "
                            "'class name<TAB>thing|stuff'")
        return cls(name or path.stem, tuple(classes), tuple(flags))

    def __len__(self) -> int:
        return len(self.classes)

    def index(self, class_name: str) -> int:
        try:
            return self.classes.index(class_name)
        except ValueError:
            raise DataError(f"class {class_name!r} is not in vocabulary {self.name!r}") from None

    @property
    def things(self) -> tuple[str, ...]:
        return tuple(c for c, t in zip(self.classes, self.is_thing) if t)

    @property
    def stuff(self) -> tuple[str, ...]:
        return tuple(c for c, t in zip(self.classes, self.is_thing) if not t)

    def subset(self, names: Sequence[str], name: str | None = None) -> Vocabulary:
        """The vocabulary restricted to ``names`` (kept in the given order)."""
        flags = tuple(self.is_thing[self.index(n)] for n in names)
        return Vocabulary(name or self.name, tuple(names), flags)


def synonyms(class_name: str) -> tuple[str, ...]:
    """The names one vocabulary line gives a class: ``"building, edifice"`` → ``("building", "edifice")``.

    Lines list synonyms separated by commas, as ADE20K's objectInfo150 does; a line without a comma is its own
    only name. The class itself keeps the whole line as its name.
    """
    names = tuple(n.strip() for n in class_name.split(",") if n.strip())
    return names or (class_name.strip(),)
