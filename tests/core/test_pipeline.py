"""Pipeline specs, presets, the pass registry and option conversion."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from spa_compiler.errors import UsageError
from spa_compiler.pass_base import Pass, option_infos
from spa_compiler.passes.registry import PASSES
from spa_compiler.pipeline import PRESETS, parse, split_spec


def test_split_spec_keeps_commas_inside_braces() -> None:
    assert split_spec("a{k=v,t=1,2,x=3},b") == [("a", {"k": "v", "t": "1,2", "x": "3"}), ("b", {})]
    assert split_spec(" a , b{ } ") == [("a", {}), ("b", {})]


@pytest.mark.parametrize("spec", ["a{k=v", "a{k=v}}", "{k=v}", "a{=1}", "a{k=1,k=2}"])
def test_malformed_specs_are_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError):
        parse(spec)


def test_parse_builds_typed_options() -> None:
    (p,) = parse("prune-uniform{ratio=0.5,round-to=8,norm=l1}")
    assert (p.ratio, p.round_to, p.norm) == (0.5, 8, "l1")
    assert isinstance(p.ratio, float) and isinstance(p.round_to, int)


def test_unknown_passes_reported_together() -> None:
    with pytest.raises(UsageError) as e:
        parse("cleanup,prune-unifrm,foo")
    assert "prune-unifrm" in str(e.value) and "foo" in str(e.value)


@pytest.mark.parametrize("name", sorted(PASSES))
def test_registry_entries_import_and_match(name: str) -> None:
    module, _, cls_name = PASSES[name].partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    assert issubclass(cls, Pass)
    assert cls.name == name
    assert cls.__doc__ and cls.__doc__.strip()
    assert dataclasses.is_dataclass(cls)
    for info in option_infos(cls):
        assert info.doc, f"{name}: option {info.name} has no doc line in the class docstring"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_parse(name: str) -> None:
    spec = PRESETS[name]
    passes = parse(spec) if spec else []
    assert all(isinstance(p, Pass) for p in passes)


def test_bool_and_tuple_options() -> None:
    (p,) = parse("cleanup{fold-constants=yes}")
    assert p.fold_constants is True
    with pytest.raises(UsageError, match="expected bool"):
        parse("cleanup{fold-constants=maybe}")
