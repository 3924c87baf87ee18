"""Timings cached across runs: a second compile of the same model for the same target re-times
nothing it has timed before.

What is cached: latency *ratios* (a variant's median over the dense model's, timed in
alternation) and the dense median of the same measurement, for the latency table's pruned
variants and for the search's candidate plans. What keys them:

* the file: the model's `structure_fingerprint` (nodes, attributes, shapes; weight values are
  left out: they do not change the latency), the concrete input shapes, the provider's provenance
  (device, runtime and its version, execution provider, threads, precision, lowering) and the tool version
  (a new version may rewrite a plan differently);
* the entry: what was timed (a table job: the signature's group ids and the kept level; a
  candidate: its plan).

Analytic providers are never cached (they are cheap and exact). Where: ``$SPA_COMPILER_CACHE``
(shared with the model zoo), else ``$XDG_CACHE_HOME/spa-compiler``, else
``~/.cache/spa-compiler``, in ``latency/<key>.json``. ``SPA_COMPILER_NO_CACHE=1`` (the CLI's
``--no-cache``) turns it off. Files are written atomically (temporary file and rename) and merged
with what another process wrote meanwhile; an unreadable file counts as empty (a miss, never an
error).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["ENV_DISABLE", "TimingCache", "cache_enabled", "cache_root", "entry_key", "open_cache", "provider_cache"]

ENV_DISABLE = "SPA_COMPILER_NO_CACHE"
SCHEMA = "spa-compiler/timing-cache/1"


def cache_enabled() -> bool:
    """False when ``SPA_COMPILER_NO_CACHE`` is set to anything but ``""``/``0``/``false``."""
    return os.environ.get(ENV_DISABLE, "").strip().lower() in ("", "0", "false", "no")


def cache_root() -> Path:
    """The user's cache folder for spa-compiler (not created here)."""
    if os.environ.get("SPA_COMPILER_CACHE"):
        return Path(os.environ["SPA_COMPILER_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "spa-compiler"
    return Path.home() / ".cache" / "spa-compiler"


class TimingCache:
    """Ratios and dense medians by entry key, backed by one JSON file (see the module docstring).

    Attributes:
        path: The file (None: a memory-only cache, used when caching is off).
        hits: Lookups answered from the cache in this process.
        misses: Lookups that were not.
    """

    def __init__(self, path: Path | None, key: Mapping[str, Any]) -> None:
        self.path = path
        self.key = dict(key)
        self.entries: dict[str, list[float]] = {}
        self._dirty: dict[str, list[float]] = {}
        self.hits = 0
        self.misses = 0
        if path is not None:
            self.entries = self._read()

    def _read(self) -> dict[str, list[float]]:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            logger.warning("timing cache %s is unreadable (%s): ignored", self.path, e)
            return {}
        if not isinstance(data, dict) or data.get("schema") != SCHEMA or data.get("key") != self.key:
            return {}
        entries = data.get("entries")
        if not isinstance(entries, dict):
            return {}
        return {k: [float(x) for x in v] for k, v in entries.items()
                if isinstance(v, list) and len(v) in (2, 3) and all(isinstance(x, (int, float)) for x in v)}

    def get(self, entry: str) -> tuple[float, float] | None:
        """``(ratio, dense_ms)`` of a cached timing, or None."""
        got = self.entries.get(entry)
        if got is None:
            self.misses += 1
            return None
        self.hits += 1
        return got[0], got[1]

    def ci(self, entry: str) -> float:
        """The 95% half-interval recorded with a timing (0.0 when none was)."""
        got = self.entries.get(entry)
        return float(got[2]) if got is not None and len(got) > 2 else 0.0

    def put(self, entry: str, ratio: float, dense_ms: float, ci: float | None = None) -> None:
        """Record a timing (written by `flush`), with its ratio's 95% half-interval when known."""
        value = [float(ratio), float(dense_ms)] + ([float(ci)] if ci is not None else [])
        self.entries[entry] = self._dirty[entry] = value

    def flush(self) -> None:
        """Write new entries, merged with the file's current content; errors are only logged."""
        if self.path is None or not self._dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            merged = {**self._read(), **self._dirty}
            text = json.dumps({"schema": SCHEMA, "key": self.key, "entries": merged}, indent=0)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.path)
            self.entries.update(merged)
            self._dirty.clear()
        except OSError as e:
            logger.warning("could not write the timing cache %s: %s", self.path, e)


def open_cache(
    model_fingerprint: str,
    input_shapes: Mapping[str, Sequence[int]],
    provenance: Mapping[str, Any],
) -> TimingCache:
    """The cache for one model, shapes and provider; memory-only when caching is off."""
    from spa_compiler._version import __version__

    key = {
        "model": model_fingerprint,
        "shapes": {k: [int(d) for d in v] for k, v in sorted(input_shapes.items())},
        "provider": {k: provenance.get(k) for k in
                     ("device", "runtime", "runtime_version", "provider", "threads", "precision", "lowering")},
        "tool_version": __version__,
    }
    if not cache_enabled():
        return TimingCache(None, key)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return TimingCache(cache_root() / "latency" / f"{digest}.json", key)


def entry_key(kind: str, items: Any) -> str:
    """A stable entry key, e.g. ``entry_key("table", (group_ids, kept))``."""
    return kind + ":" + hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:24]


def provider_cache(model: Any, input_shapes: Mapping[str, Sequence[int]], provider: Any) -> TimingCache | None:
    """`open_cache` for a ModelIR and a latency provider; None for analytic providers."""
    if provider is None or getattr(provider, "kind", "analytic") == "analytic":
        return None
    from spa_compiler.latency.table import structure_fingerprint

    return open_cache(structure_fingerprint(model), input_shapes, provider.provenance())
