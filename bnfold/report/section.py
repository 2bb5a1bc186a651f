"""A flat JSON object as a dataclass (:class:`Section`), and the readers of nested values the report's sections
use: a list of objects (:func:`list_of`), an object that may be empty (:func:`optional`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from bnfold.bench.timing import LatencyResult
from bnfold.fold.records import BnRecord
from bnfold.verify.report import ParityCheck

S = TypeVar("S", bound="Section")


class Section:
    """A flat JSON object as a dataclass: one field per key, in written order; ``extra`` keeps the keys the
    class does not know. ``READERS`` turns a nested value (a list of records, a sub-object) into its type."""

    READERS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}
    extra: dict[str, Any]

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any]) -> S:
        """The section of a report read from JSON; absent keys take their defaults."""
        data = as_mapping(data)
        names = [f.name for f in fields(cls) if f.name != "extra"]  # type: ignore[arg-type]
        values = {name: cls.READERS.get(name, _same)(data[name]) for name in names if name in data}
        values["extra"] = {key: value for key, value in data.items() if key not in names}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The section as the report writes it."""
        out = {f.name: plain(getattr(self, f.name)) for f in fields(self) if f.name != "extra"}  # type: ignore[arg-type]
        return {**out, **self.extra}


def _same(value: Any) -> Any:
    return value


def plain(value: Any) -> Any:
    """A report value as JSON data: sections and records by their own ``to_dict``/``to_json``, lists item by item."""
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, (BnRecord, ParityCheck, LatencyResult)):
        return value.to_json()
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def list_of(read: Callable[[Mapping[str, Any]], Any]) -> Callable[[Any], list[Any]]:
    """A reader of a JSON list whose items ``read`` reads; a TypeError for anything but a list."""

    def read_all(items: Any) -> list[Any]:
        if not isinstance(items, list):
            raise TypeError(f"expected a list, got {type(items).__name__}")
        return [read(item) for item in items]

    return read_all


def optional(read: Callable[[Mapping[str, Any]], Any]) -> Callable[[Any], Any]:
    """An object section that may be empty (``{}``: not part of this run) as None."""
    return lambda data: read(data) if as_mapping(data) else None


def as_mapping(data: Any) -> Mapping[str, Any]:
    """``data`` when it is a JSON object; a TypeError for anything else."""
    if not isinstance(data, Mapping):
        raise TypeError(f"expected an object, got {type(data).__name__}")
    return data


def jsonable(value: Any) -> Any:
    """A value ``json`` cannot write (a path, a numpy scalar or array) as one it can."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
