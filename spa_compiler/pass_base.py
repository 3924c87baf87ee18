"""The Pass protocol: an in-place rewrite of a ModelIR with declared options and needs.

Passes are frozen dataclasses; their fields are the pass options and become pipeline options
(`name{field-name=value}`) automatically. A pass hands back a `PassResult`; the PassManager, not
the pass, writes the report.
"""

from __future__ import annotations

import abc
import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from spa_compiler.context import CompileContext
from spa_compiler.errors import UsageError
from spa_compiler.ir import ModelIR
from spa_compiler.requirements import Requirement


@dataclasses.dataclass(frozen=True)
class PassResult:
    """What a pass hands back to the PassManager.

    Attributes:
        model: The same ModelIR object the pass received (passes are in place).
        modified: Whether the graph or any initializer changed.
        stats: Small JSON-able numbers for the report, e.g. {"groups_pruned": 12}.
        skipped: Why candidates were left alone, reason -> count.
        details: Optional per-candidate records (e.g. per group: level chosen, error).
        notes: Lines the report should show (e.g. a budget found unreachable).
    """

    model: ModelIR
    modified: bool
    stats: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    skipped: Mapping[str, int] = dataclasses.field(default_factory=dict)
    details: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Pass(abc.ABC):
    """Base class of every pass. Subclasses set `name` and implement `run`."""

    name: ClassVar[str]
    requires: ClassVar[frozenset[Requirement]] = frozenset()

    def requirements(self) -> frozenset[Requirement]:
        """Needs of this configured instance (override when options change them)."""
        return self.requires

    def check_preconditions(self, model: ModelIR, ctx: CompileContext) -> None:
        """Raise PreconditionError if the options or the model are outside what this pass does."""
        del model, ctx

    @abc.abstractmethod
    def run(self, model: ModelIR, ctx: CompileContext) -> PassResult:
        """Rewrite `model` in place and describe what happened."""

    def options(self) -> dict[str, Any]:
        """The option values of this instance, by CLI name."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    """One pass option as `list-passes` shows it."""

    name: str
    type: str
    default: Any
    doc: str


def option_infos(cls: type[Pass]) -> list[OptionInfo]:
    """The options of a pass class: CLI name, type, default, and the doc line from the class."""
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append(
            OptionInfo(f.name.replace("_", "-"), _type_name(hints[f.name]), default, docs.get(f.name, ""))
        )
    return out


def _field_docs(cls: type) -> dict[str, str]:
    """Option docs from the `Options:` sections of the class docstring and its bases' (`name: text`
    lines; a line indented deeper than the option names continues the option above it). A subclass
    documents only the options it adds or words differently; the rest come from its bases."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if base is not object and "__doc__" in vars(base):
            docs.update(_own_field_docs(base.__doc__ or ""))
    return docs


def _own_field_docs(text: str) -> dict[str, str]:
    docs: dict[str, str] = {}
    if "Options:" not in text:
        return docs
    indent: int | None = None
    last: str | None = None
    for raw in text.split("Options:", 1)[1].splitlines():
        line = raw.strip()
        if not line:
            continue
        depth = len(raw) - len(raw.lstrip())
        if indent is not None and depth > indent and last is not None:
            docs[last] = f"{docs[last]} {line}"
            continue
        if ":" not in line or (indent is not None and depth != indent):
            break
        indent = depth
        key, _, value = line.partition(":")
        last = key.strip().replace("-", "_")
        docs[last] = value.strip()
    return docs


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def convert_option(cls: type[Pass], key: str, raw: str) -> Any:
    """Convert one `key=value` string to the type of the dataclass field it names.

    Raises:
        UsageError: unknown option, or a value that does not convert.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    name = key.replace("-", "_")
    if name not in fields:
        valid = ", ".join(sorted(n.replace("_", "-") for n in fields)) or "(none)"
        raise UsageError(f"pass {cls.name!r} has no option {key!r}", hint=f"options: {valid}")
    tp = typing.get_type_hints(cls)[name]
    try:
        return _convert(tp, raw.strip())
    except (ValueError, TypeError) as e:
        raise UsageError(
            f"pass {cls.name!r} option {key}={raw!r}: expected {_type_name(tp)}", hint=str(e)
        ) from e


def _convert(tp: Any, raw: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        non_none = [a for a in args if a is not type(None)]
        if raw.lower() in ("none", "null") and len(non_none) < len(args):
            return None
        last: Exception | None = None
        for a in non_none:
            try:
                return _convert(a, raw)
            except (ValueError, TypeError) as e:
                last = e
        raise ValueError(str(last))
    if origin is typing.Literal:
        for a in args:
            if str(a) == raw:
                return a
        raise ValueError(f"one of {', '.join(map(str, args))}")
    if origin is tuple:
        items = [s for s in raw.split(",") if s.strip()] if raw else []
        elem = args[0] if args else str
        return tuple(_convert(elem, s.strip()) for s in items)
    if tp is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("true or false")
    if tp is int:
        return int(raw)
    if tp is float:
        return float(raw)
    if tp is str:
        return raw
    raise TypeError(f"unsupported option type {tp}")
