"""Pipelines from spec strings (`a{k=v,k2=v2},b`) and named presets."""

from __future__ import annotations

import difflib
import importlib
import logging
import re

from spa_compiler.errors import UsageError
from spa_compiler.pass_base import Pass, convert_option
from spa_compiler.passes.registry import ALIASES, PASSES

logger = logging.getLogger(__name__)

#: Named pipelines for `--preset`.
PRESETS: dict[str, str] = {
    "none": "",
    "cleanup": "cleanup",
    # latency-driven: OBS with --calib, data-free OBSPA without; uniform 25% without a budget
    "spa": "cleanup,prune-to-budget,cleanup",
    "ziplm": "cleanup,prune-to-budget{criterion=obs},cleanup",
    "obspa": "cleanup,prune-to-budget{criterion=obspa},cleanup",
    "magnitude": "cleanup,prune-to-budget{criterion=magnitude},cleanup",
    # the common tools' baseline: one share for every group (searched to the budget when given)
    "uniform": "cleanup,prune-uniform,cleanup",
    "uniform-magnitude": "cleanup,prune-uniform{criterion=magnitude},cleanup",
    # N:M (2:4) where the target measures it faster (TensorRT's rule of thumb where it cannot be timed)
    "nm": "cleanup,sparsify-nm,cleanup",
    # structured pruning first (to the budget when given), then 2:4 on the surviving weights
    "prune-nm": "cleanup,prune-to-budget,cleanup,sparsify-nm,cleanup",
    # Monarch variants per linear layer, kept only where measured faster (needs a budget)
    "monarch": "cleanup,substitute-monarch,cleanup",
}

#: Preset names of earlier releases.
PRESET_ALIASES: dict[str, str] = {"simple-chains": "uniform-magnitude"}

DEFAULT_PRESET = "spa"


def pass_class(name: str) -> type[Pass]:
    """Import the pass class registered under `name` (or under an earlier release's name)."""
    name = ALIASES[name][0] if name in ALIASES else name
    try:
        target = PASSES[name]
    except KeyError as e:
        raise UsageError(f"unknown pass {name!r}", hint=_did_you_mean(name)) from e
    module, _, cls_name = target.partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    return cls  # type: ignore[no-any-return]


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, [*PASSES, *ALIASES], n=1)
    base = f"did you mean {close[0]!r}? " if close else ""
    return base + "see `spa-compile list-passes`"


_ITEM = re.compile(r"\s*([A-Za-z0-9_-]+)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


def split_spec(spec: str) -> list[tuple[str, dict[str, str]]]:
    """Split `a{k=v,t=1,2},b` into [(name, {key: raw value})]; commas inside braces are kept."""
    out: list[tuple[str, dict[str, str]]] = []
    pos = 0
    spec = spec.strip()
    while pos < len(spec):
        m = _ITEM.match(spec, pos)
        if not m or m.end() == pos:
            raise UsageError(
                f"cannot parse the pipeline at {spec[pos:]!r}",
                hint="write passes as name{key=value,...},name2",
            )
        name, body = m.group(1), m.group(2)
        out.append((name, _split_options(name, body or "")))
        pos = m.end()
    return out


def _split_options(name: str, body: str) -> dict[str, str]:
    # "k=v,t=1,2,x=3": a comma not followed by `ident=` continues the previous value (tuples).
    opts: dict[str, str] = {}
    key = None
    for part in body.split(","):
        if re.match(r"\s*[A-Za-z_][A-Za-z0-9_-]*\s*=", part):
            key, _, value = part.partition("=")
            key = key.strip()
            if key in opts:
                raise UsageError(f"pass {name!r}: option {key!r} given twice")
            opts[key] = value.strip()
        elif key is not None:
            opts[key] += "," + part.strip()
        elif part.strip():
            raise UsageError(f"pass {name!r}: option {part.strip()!r} has no value", hint="write key=value")
    return opts


def resolve_alias(name: str, raw: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A pass name of an earlier release and its options, in today's spelling.

    prune-ziplm is prune-to-budget (prune-uniform with `uniform=true`); prune-spa is
    prune-uniform with the magnitude criterion (its `magnitude-normalized` is `normalize=true`);
    prune-magnitude's simple Conv/Gemm chains are a subset of the coupled-channel groups
    prune-uniform prunes.
    """
    if name not in ALIASES:
        return name, raw
    new, implied, renamed = ALIASES[name]
    opts = {renamed.get(k.replace("_", "-"), k): v for k, v in raw.items()}
    if name == "prune-ziplm" and opts.pop("uniform", "false").strip().lower() in ("1", "true", "yes", "on"):
        new = "prune-uniform"
        opts.pop("levels", None)
    if name in ("prune-spa", "prune-magnitude"):
        if opts.get("criterion") == "magnitude-normalized":
            opts["criterion"] = "magnitude"
            opts["normalize"] = "true"
        opts.setdefault("max-ratio", "0.95")  # these took any ratio below 1
        opts.setdefault("round-to", "1")
    merged = {**implied, **opts}
    spelled = ",".join(f"{k}={v}" for k, v in merged.items())
    logger.info("pass %r is now %s", name, f"{new}{{{spelled}}}" if spelled else new)
    return new, merged


def parse(spec: str) -> list[Pass]:
    """Build the passes of a pipeline spec; every unknown name is reported at once."""
    items = [resolve_alias(n, raw) for n, raw in split_spec(spec)]
    unknown = [n for n, _ in items if n not in PASSES]
    if unknown:
        hints = "; ".join(f"{n}: {_did_you_mean(n)}" for n in unknown)
        raise UsageError(f"unknown passes: {unknown}", hint=hints)
    passes = []
    for name, raw in items:
        cls = pass_class(name)
        kwargs = {k.replace("-", "_"): convert_option(cls, k, v) for k, v in raw.items()}
        try:
            passes.append(cls(**kwargs))
        except (TypeError, ValueError) as e:
            raise UsageError(f"pass {name!r}: {e}") from e
    return passes


def preset(name: str) -> str:
    """The spec of a named preset."""
    name = PRESET_ALIASES.get(name, name)
    try:
        return PRESETS[name]
    except KeyError as e:
        raise UsageError(f"unknown preset {name!r}", hint=f"use one of {', '.join(PRESETS)}") from e
