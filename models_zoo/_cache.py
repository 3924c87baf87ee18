"""The on-disk zoo cache: where entries live, when they are stale, and how they are built safely.

Layout: `<cache_dir()>/zoo/<name>-<exporter>/` holds `model.onnx`, `test_data_set_0/` and
`zoo.json` (provenance: versions, opset, seed, and a fingerprint of the zoo's sources).

Safety:
    * An entry is built in a temporary sibling folder and renamed into place (one `rename`), so
      a half-built entry is never visible under the final name.
    * Builders of the same entry serialise on an advisory `flock` of `zoo/.locks/<entry>.lock`
      and re-check the cache once they hold it, so concurrent builders export once and never
      interleave. Without `fcntl` (Windows) the rename still keeps entries whole: the loser of
      the race discards its copy.
    * An entry whose fingerprint differs from the current sources (model code, export code,
      torch/onnx/onnxscript versions) is rebuilt; `force=True` rebuilds unconditionally.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Iterator

from spa_compiler.models_zoo._spec import ZooModel

logger = logging.getLogger(__name__)

CACHE_ENV = "SPA_COMPILER_CACHE"
MANIFEST_FILE = "zoo.json"
_MODEL_FILE = "model.onnx"  # == _export.MODEL_FILE (not imported: _export imports torch)
_SEED = 0
_ZOO_SOURCES = ("_spec", "_registry", "_export", "_cache")


def cache_dir() -> pathlib.Path:
    """`$SPA_COMPILER_CACHE` if set, else `~/.cache/spa-compiler` (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return (
        pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "spa-compiler"
    )


def entry_dir(model: ZooModel, exporter: str) -> pathlib.Path:
    """Final folder of one cache entry (it may not exist yet)."""
    return cache_dir() / "zoo" / f"{model.name}-{exporter}"


def fingerprint(model: ZooModel, exporter: str) -> str:
    """sha256 over the model's source file, the zoo's own sources and the tool versions."""
    digest = hashlib.sha256(f"{model.name}|{exporter}|seed={_SEED}".encode())
    modules = [model.module_name] + [f"spa_compiler.models_zoo.{m}" for m in _ZOO_SOURCES]
    for module in modules:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise ValueError(f"zoo model {model.name!r}: cannot find the source of {module!r}")
        digest.update(pathlib.Path(spec.origin).read_bytes())
    for package, version in _versions().items():
        digest.update(f"|{package}={version}".encode())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("torch", "onnx", "onnxscript"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def is_fresh(model: ZooModel, exporter: str) -> bool:
    """Whether the entry exists, is complete and was built from the current sources."""
    folder = entry_dir(model, exporter)
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (folder / _MODEL_FILE).is_file() and manifest.get("fingerprint") == fingerprint(
        model, exporter
    )


def build_entry(model: ZooModel, exporter: str, *, force: bool = False) -> pathlib.Path:
    """Return the entry's model path, exporting it first if missing, stale or `force`d."""
    final = entry_dir(model, exporter)
    if not force and is_fresh(model, exporter):
        return final / _MODEL_FILE
    zoo_root = final.parent
    zoo_root.mkdir(parents=True, exist_ok=True)
    with _entry_lock(zoo_root, final.name):
        if not force and is_fresh(model, exporter):  # built by someone else while we waited
            return final / _MODEL_FILE
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=zoo_root))
        try:
            started = time.perf_counter()
            from spa_compiler.models_zoo import _export  # torch is imported only now

            _export.export_entry(model, exporter, tmp, seed=_SEED)
            _write_manifest(tmp, model, exporter, opset=_export.OPSETS[exporter])
            _swap_into_place(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info(
            "zoo: exported %s (%s) in %.1fs", model.name, exporter, time.perf_counter() - started
        )
    return final / _MODEL_FILE


def _write_manifest(folder: pathlib.Path, model: ZooModel, exporter: str, *, opset: int) -> None:
    manifest = {
        "name": model.name,
        "exporter": exporter,
        "opset": opset,
        "seed": _SEED,
        "input_shapes": {k: list(v) for k, v in model.input_shapes.items()},
        "dynamic_axes": {
            k: {str(a): d for a, d in v.items()} for k, v in model.dynamic_axes.items()
        },
        "versions": _versions(),
        "fingerprint": fingerprint(model, exporter),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


def _swap_into_place(tmp: pathlib.Path, final: pathlib.Path) -> None:
    """Rename `tmp` to `final`; a previous `final` is first renamed aside, then deleted."""
    old: pathlib.Path | None = None
    if final.exists():
        old = pathlib.Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=final.parent))
        os.replace(final, old / final.name)
    try:
        os.rename(tmp, final)
    except OSError as e:
        # Without a lock another builder may have won the race: keep its (complete) entry.
        if not (final / _MODEL_FILE).is_file():
            raise OSError(f"zoo: could not move the new entry into {final}") from e
        logger.debug("zoo: %s appeared concurrently, keeping it", final)
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _entry_lock(zoo_root: pathlib.Path, entry: str) -> Iterator[None]:
    """Exclusive advisory lock for one entry (no-op where `fcntl` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    lock_dir = zoo_root / ".locks"
    lock_dir.mkdir(exist_ok=True)
    with open(lock_dir / f"{entry}.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
