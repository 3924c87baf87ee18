"""Calibration inputs (``--calib``) and the intermediate activations they produce.

A *feed* is one model run's inputs, ``dict[input name, np.ndarray]``. A `CalibrationSource` is a
re-iterable collection of feeds, read lazily: every ``iter()`` starts again from the beginning and
holds one feed in memory at a time (passes iterate once per layer or per layer block).

``load_calibration(spec, input_names)`` understands three kinds of ``spec``:

1. A directory of NumPy files (`NumpyDirectorySource`), any mix of:

   * ``*.npz`` files, one feed each, keyed by input name (``np.savez(path, ids=..., mask=...)``);
   * ``<input>_<k>.npy`` files directly in the directory: feed ``k`` is ``{input: <input>_<k>.npy}``
     for every input (all inputs must have the same set of ``k``);
   * per-input folders ``<input>/*.npy``: the i-th file (natural sort: ``2.npy`` before ``10.npy``)
     of each folder makes feed i (all folders must hold the same number of files).

   Input names are matched literally or with every character outside ``[A-Za-z0-9_.-]`` replaced by
   ``_`` (``input:0`` -> ``input_0``). ``.npz`` feeds come first, then ``.npy`` feeds; files are
   opened with ``allow_pickle=False``. A single ``.npz`` file is also accepted as a one-feed source.
2. The ONNX backend-test layout (`TestDataSetSource`): a directory of ``test_data_set_*/`` folders,
   one feed each (or one such folder itself), with ``input_<i>.pb`` serialized ``TensorProto``
   files. A tensor is matched to an input by its ``name``, else by position ``i``.
3. ``module:function`` or ``path/to/file.py:function`` (`FunctionSource`): the function is called
   with no arguments at every iteration and must return an iterable of feeds (a generator function
   is ideal: it streams and restarts).

Every feed is validated as it is read: a missing input, a non-array value, a dtype other than the
expected one (when ``expected_dtypes`` is given, e.g. from `model_inputs`) or a shape that
contradicts a fixed model dimension raises `UsageError` with a one-line message naming the file.
Keys that are not model inputs are dropped.

`ActivationCollector` runs ONNX Runtime (CPU, graph optimizations off so tensor names survive) on a
copy of the model whose graph outputs also list the requested intermediate tensors, yielding one
``dict[tensor name, array]`` per feed, e.g. to feed `spa_compiler.criteria.hessian.HessianAccumulator`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from spa_compiler.errors import (
    InvalidModelError,
    PreconditionError,
    SpaError,
    UsageError,
)
from spa_compiler.ir import ModelIR
from spa_compiler.protos import copy_fields

logger = logging.getLogger(__name__)

__all__ = [
    "ActivationCollector",
    "CalibrationSource",
    "Feed",
    "FunctionSource",
    "InputSpec",
    "NumpyDirectorySource",
    "TestDataSetSource",
    "load_calibration",
    "model_inputs",
]

Feed = dict[str, npt.NDArray[Any]]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_HINT_LAYOUT = (
    "give a folder of .npz feeds, <input>_<k>.npy files, <input>/ folders of .npy, "
    "test_data_set_*/input_<i>.pb, or module:function"
)

#: Above this many bytes a model goes to ONNX Runtime through a temporary file with external data.
_MAX_INLINE_BYTES = 2_000_000_000

#: Initializers at least this large go to the external-data file on that route.
_EXTERNAL_MIN_BYTES = 1024


@runtime_checkable
class CalibrationSource(Protocol):
    """Re-iterable feeds: each ``iter()`` restarts and streams one feed at a time."""

    def __iter__(self) -> Iterator[Feed]:
        """Yield feeds ``{input name: array}``."""
        ...


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A graph input a feed must provide.

    Attributes:
        name: The graph input's name.
        dtype: Its numpy dtype (None for non-tensor inputs).
        shape: Its dims: ints for fixed sizes, None for symbolic or unknown ones (None: unknown
            rank).
    """

    name: str
    dtype: np.dtype[Any] | None
    shape: tuple[int | None, ...] | None


def model_inputs(model: onnx.ModelProto | ModelIR) -> list[InputSpec]:
    """The real inputs of a model (graph inputs that are not initializers), in graph order."""
    proto = model.to_proto(weights=False) if isinstance(model, ModelIR) else model
    inits = {t.name for t in proto.graph.initializer}
    out = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        dtype: np.dtype[Any] | None = None
        shape: tuple[int | None, ...] | None = None
        if vi.type.HasField("tensor_type"):
            tt = vi.type.tensor_type
            if tt.elem_type:
                dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
            if tt.HasField("shape"):
                shape = tuple(
                    d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None
                    for d in tt.shape.dim
                )
        out.append(InputSpec(vi.name, dtype, shape))
    return out


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _file_stem(name: str) -> str:
    return _UNSAFE.sub("_", name)


# ------------------------------------------------------------------------------ validation


class _Validated:
    """Base of the file/function sources: wraps raw feeds with validation and a limit."""

    def __init__(
        self,
        input_names: Sequence[str],
        *,
        expected_dtypes: Mapping[str, npt.DTypeLike] | None = None,
        expected_shapes: Mapping[str, Sequence[int | None] | None] | None = None,
        limit: int | None = None,
    ) -> None:
        if not input_names:
            raise UsageError("the model has no inputs to calibrate")
        self.input_names = tuple(input_names)
        self.expected_dtypes = {
            k: np.dtype(v) for k, v in (expected_dtypes or {}).items() if v is not None
        }
        self.expected_shapes = {k: v for k, v in (expected_shapes or {}).items() if v is not None}
        if limit is not None and limit <= 0:
            raise UsageError(f"the calibration limit must be positive, got {limit}")
        self.limit = limit

    def _raw(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
        """Yield ``(where, raw feed)``; ``where`` names the file for error messages."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Feed]:
        """Validated feeds, at most ``limit`` of them."""
        for count, (where, raw) in enumerate(self._raw()):
            if self.limit is not None and count >= self.limit:
                return
            yield self._check(raw, where)

    def _check(self, raw: Mapping[str, Any], where: str) -> Feed:
        if not isinstance(raw, Mapping):
            raise UsageError(
                f"calibration feed {where} is a {type(raw).__name__}, expected a dict of "
                "input name -> array"
            )
        missing = [n for n in self.input_names if n not in raw]
        if missing:
            raise UsageError(
                f"calibration feed {where} lacks input(s) {missing} "
                f"(it has {sorted(map(str, raw))})",
                hint=f"the model's inputs are {list(self.input_names)}",
            )
        feed: Feed = {}
        for name in self.input_names:
            try:
                arr = np.asarray(raw[name])
            except Exception as e:  # ragged lists and the like
                raise UsageError(f"calibration feed {where}: input {name!r} is not an array") from e
            if arr.dtype == object:
                raise UsageError(f"calibration feed {where}: input {name!r} is not a numeric array")
            want = self.expected_dtypes.get(name)
            if want is not None and arr.dtype != want:
                raise UsageError(
                    f"calibration feed {where}: input {name!r} has dtype {arr.dtype}, "
                    f"expected {want}",
                    hint=f"save it with .astype(np.{want.name})",
                )
            shape = self.expected_shapes.get(name)
            if shape is not None and (
                arr.ndim != len(shape)
                or any(
                    d is not None and d >= 0 and d != a
                    for d, a in zip(shape, arr.shape, strict=True)
                )
            ):
                dims = ["?" if d is None or d < 0 else d for d in shape]
                raise UsageError(
                    f"calibration feed {where}: input {name!r} has shape {list(arr.shape)}, "
                    f"expected {dims}"
                )
            if arr.dtype.kind in "fc" and arr.size and not np.isfinite(arr).all():
                n = int(np.count_nonzero(~np.isfinite(arr)))
                raise UsageError(
                    f"calibration feed {where}: input {name!r} holds {n} NaN/Inf value(s) of {arr.size}",
                    hint="calibration data must be finite: fix or drop that sample",
                )
            feed[name] = arr
        return feed


# ------------------------------------------------------------------------------- sources


class NumpyDirectorySource(_Validated):
    """Feeds from ``.npz`` files and ``.npy`` files in a directory (layouts: module docstring).

    Attributes:
        directory: The folder.
        npz_files: The ``.npz`` feeds, natural-sorted.
        npy_feeds: The ``.npy`` feeds: one ``{input name: file}`` per feed.
    """

    def __init__(
        self, directory: str | os.PathLike[str], input_names: Sequence[str], **kwargs: Any
    ) -> None:
        """Index the folder (listing only; no array is read here).

        Raises:
            UsageError: the folder holds no usable file, or the ``.npy`` files do not line up.
        """
        super().__init__(input_names, **kwargs)
        self.directory = Path(directory)
        if self.directory.is_file():
            self.npz_files = [self.directory]
            self.npy_feeds: list[dict[str, Path]] = []
            return
        entries = sorted(self.directory.iterdir(), key=lambda p: _natural_key(p.name))
        self.npz_files = [p for p in entries if p.is_file() and p.suffix == ".npz"]
        self.npy_feeds = self._index_npy(entries)
        if not self.npz_files and not self.npy_feeds:
            raise UsageError(
                f"calibration folder {self.directory} holds no calibration files", hint=_HINT_LAYOUT
            )

    def _index_npy(self, entries: list[Path]) -> list[dict[str, Path]]:
        stems = {name: {name, _file_stem(name)} for name in self.input_names}
        dirs = {p.name: p for p in entries if p.is_dir()}
        folder_of = {
            n: next((dirs[s] for s in sorted(v) if s in dirs), None) for n, v in stems.items()
        }
        if any(folder_of.values()):
            lacking = [n for n, f in folder_of.items() if f is None]
            if lacking:
                raise UsageError(
                    f"calibration folder {self.directory} has per-input folders but none for "
                    f"{lacking}"
                )
            files = {
                n: sorted(f.glob("*.npy"), key=lambda p: _natural_key(p.name))
                for n, f in folder_of.items()
                if f is not None
            }
            counts = {n: len(v) for n, v in files.items()}
            if len(set(counts.values())) != 1:
                raise UsageError(
                    f"per-input folders of {self.directory} hold different numbers of .npy files: "
                    f"{counts}"
                )
            n_feeds = next(iter(counts.values()))
            return [{n: files[n][k] for n in self.input_names} for k in range(n_feeds)]
        flat = [p for p in entries if p.is_file() and p.suffix == ".npy"]
        by_input: dict[str, dict[int, Path]] = {}
        for name, names in stems.items():
            pats = [re.compile(re.escape(s) + r"_(\d+)\.npy") for s in names]
            found: dict[int, Path] = {}
            for p in flat:
                for pat in pats:
                    m = pat.fullmatch(p.name)
                    if m:
                        found[int(m.group(1))] = p
            by_input[name] = found
        if not any(by_input.values()):
            if flat:
                raise UsageError(
                    f"the .npy files in {self.directory} are not named <input>_<k>.npy for the "
                    f"inputs {list(self.input_names)} (e.g. {flat[0].name})",
                    hint=_HINT_LAYOUT,
                )
            return []
        all_k = sorted(set().union(*(set(v) for v in by_input.values())))
        for name, found in by_input.items():
            lack = [k for k in all_k if k not in found]
            if lack:
                raise UsageError(
                    f"calibration folder {self.directory} has no file for input {name!r} of feed "
                    f"{lack[0]} ({_file_stem(name)}_{lack[0]}.npy)"
                )
        return [{n: by_input[n][k] for n in self.input_names} for k in all_k]

    def __len__(self) -> int:
        """Number of feeds (before ``limit``)."""
        n = len(self.npz_files) + len(self.npy_feeds)
        return n if self.limit is None else min(n, self.limit)

    def _raw(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
        for path in self.npz_files:
            try:
                with np.load(path, allow_pickle=False) as z:
                    keys = set(z.files)
                    feed = {}
                    for name in self.input_names:
                        key = name if name in keys else _file_stem(name)
                        if key in keys:
                            feed[name] = z[key]
            except Exception as e:  # BadZipFile, zlib/EOF errors of a truncated member, pickles
                raise UsageError(
                    f"cannot read calibration file {path} ({type(e).__name__}: {e}): truncated or "
                    "not written by np.savez",
                    hint="re-save it with np.savez(path, input_name=array)",
                ) from e
            missing = [n for n in self.input_names if n not in feed]
            if missing:
                raise UsageError(
                    f"calibration feed {path} lacks input(s) {missing} (the file holds the key(s) "
                    f"{sorted(keys)})",
                    hint=f"the model's inputs are {list(self.input_names)}: save one array per input "
                    "under its name",
                )
            yield str(path), feed
        for files in self.npy_feeds:
            feed = {}
            for name, path in files.items():
                try:
                    feed[name] = np.load(path, allow_pickle=False)
                except Exception as e:  # truncated, not .npy, a pickle
                    raise UsageError(
                        f"cannot read calibration file {path} ({type(e).__name__}: {e})",
                        hint="re-save it with np.save(path, array)",
                    ) from e
            names = ", ".join(p.name for p in files.values())
            yield f"{next(iter(files.values())).parent} ({names})", feed


class TestDataSetSource(_Validated):
    """Feeds from the ONNX backend-test layout: ``test_data_set_*/input_<i>.pb``.

    Attributes:
        sets: One folder per feed, natural-sorted.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self, directory: str | os.PathLike[str], input_names: Sequence[str], **kwargs: Any
    ) -> None:
        """Index the folder (listing only).

        Raises:
            UsageError: no ``test_data_set_*`` folder, or one without ``input_*.pb``.
        """
        super().__init__(input_names, **kwargs)
        self.directory = Path(directory)
        if _input_pbs(self.directory):
            self.sets = [self.directory]
        else:
            self.sets = sorted(
                (p for p in self.directory.glob("test_data_set_*") if p.is_dir()),
                key=lambda p: _natural_key(p.name),
            )
        if not self.sets:
            raise UsageError(f"{self.directory} has no test_data_set_* folder", hint=_HINT_LAYOUT)
        for s in self.sets:
            if not _input_pbs(s):
                raise UsageError(f"calibration folder {s} has no input_<i>.pb file")

    def __len__(self) -> int:
        """Number of feeds (before ``limit``)."""
        return len(self.sets) if self.limit is None else min(len(self.sets), self.limit)

    def _raw(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
        for folder in self.sets:
            feed: dict[str, Any] = {}
            for index, path in _input_pbs(folder):
                tensor = onnx.TensorProto()
                try:
                    tensor.ParseFromString(path.read_bytes())
                    arr = numpy_helper.to_array(tensor, base_dir=str(folder))
                except (OSError, DecodeError, ValueError, TypeError) as e:
                    raise UsageError(f"cannot read {path} as an ONNX TensorProto: {e}") from e
                if tensor.name in self.input_names:
                    name = tensor.name
                elif index < len(self.input_names):
                    name = self.input_names[index]
                    if tensor.name:
                        logger.debug(
                            "%s: tensor %r taken as input %r by position", path, tensor.name, name
                        )
                else:
                    raise UsageError(
                        f"{path} holds tensor {tensor.name!r}, which is not a model input, and "
                        f"its position {index} is past the {len(self.input_names)} inputs"
                    )
                feed[name] = arr
            yield str(folder), feed


def _input_pbs(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for p in folder.glob("input_*.pb"):
        m = re.fullmatch(r"input_(\d+)\.pb", p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


class FunctionSource(_Validated):
    """Feeds from a user function: ``module:function`` or ``path/to/file.py:function``.

    The function is imported once (here) and called with no arguments at every iteration.
    """

    def __init__(self, spec: str, input_names: Sequence[str], **kwargs: Any) -> None:
        """Import the function.

        Raises:
            UsageError: malformed spec, import failure, missing or non-callable attribute.
        """
        super().__init__(input_names, **kwargs)
        self.spec = spec
        self.function = _import_function(spec)

    def _raw(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
        try:
            result = self.function()
        except SpaError:
            raise
        except SystemExit as e:
            raise UsageError(
                f"calibration function {self.spec} called sys.exit({e.code!r}) instead of returning feeds",
                hint="return (or yield) dicts of input name -> array; raise an exception to report a problem",
            ) from None
        except Exception as e:
            raise UsageError(
                f"calibration function {self.spec} raised {type(e).__name__}: {e}"
            ) from e
        if isinstance(result, Mapping) or not isinstance(result, Iterable):
            raise UsageError(
                f"calibration function {self.spec} returned a {type(result).__name__}, expected an "
                "iterable of feeds (e.g. a generator of dicts)"
            )
        it = iter(result)
        k = 0
        while True:
            try:
                feed = next(it)
            except StopIteration:
                return
            except SpaError:
                raise
            except SystemExit as e:
                raise UsageError(
                    f"calibration function {self.spec} called sys.exit({e.code!r}) at feed {k}",
                    hint="yield dicts of input name -> array; raise an exception to report a problem",
                ) from None
            except Exception as e:
                raise UsageError(
                    f"calibration function {self.spec} raised {type(e).__name__} at feed {k}: {e}"
                ) from e
            yield f"{k} of {self.spec}", feed
            k += 1


def _import_function(spec: str) -> Callable[[], Any]:
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise UsageError(
            f"calibration spec {spec!r} is neither a folder nor module:function", hint=_HINT_LAYOUT
        )
    try:
        if module_part.endswith(".py") or "/" in module_part or os.sep in module_part:
            path = Path(module_part)
            if not path.is_file():
                raise UsageError(f"calibration script {path} not found")
            name = f"_spa_calibration_{abs(hash(str(path.resolve())))}"
            mod_spec = importlib.util.spec_from_file_location(name, path)
            if mod_spec is None or mod_spec.loader is None:
                raise UsageError(f"cannot import calibration script {path}")
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[name] = module
            try:
                mod_spec.loader.exec_module(module)
            except SystemExit as e:
                sys.modules.pop(name, None)
                raise UsageError(
                    f"calibration script {path} called sys.exit({e.code!r}) when imported",
                    hint="guard its command-line code with `if __name__ == \"__main__\":`",
                ) from None
            except BaseException:
                sys.modules.pop(name, None)
                raise
        else:
            module = importlib.import_module(module_part)
    except SpaError:
        raise
    except SystemExit as e:
        raise UsageError(
            f"calibration module {module_part!r} called sys.exit({e.code!r}) when imported",
            hint="guard its command-line code with `if __name__ == \"__main__\":`",
        ) from None
    except Exception as e:  # ImportError, SyntaxError, errors at import time of user code
        raise UsageError(
            f"cannot import calibration module {module_part!r}: {type(e).__name__}: {e}"
        ) from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise UsageError(f"calibration module {module_part!r} has no attribute {attr!r}")
    if not callable(fn):
        raise UsageError(f"calibration entry {spec!r} is not callable")
    return fn  # type: ignore[no-any-return]


def load_calibration(
    spec: str | os.PathLike[str],
    input_names: Sequence[str],
    *,
    expected_dtypes: Mapping[str, npt.DTypeLike] | None = None,
    expected_shapes: Mapping[str, Sequence[int | None] | None] | None = None,
    limit: int | None = None,
    check_first: bool = True,
) -> CalibrationSource:
    """Open calibration data given on the command line (``--calib``); layouts in the module doc.

    Args:
        spec: A folder, a ``.npz`` file, or ``module:function`` / ``file.py:function``.
        input_names: The model's inputs every feed must provide (`model_inputs`).
        expected_dtypes: input name -> dtype; feeds with another dtype are rejected.
        expected_shapes: input name -> dims (None / <= 0 for dynamic ones); feeds that contradict a
            fixed dim or the rank are rejected.
        limit: Use at most this many feeds.
        check_first: Read and validate the first feed now (file sources only), so that a bad folder
            fails before any pass runs.

    Returns:
        A re-iterable `CalibrationSource` (file sources also have ``len()``).

    Raises:
        UsageError: missing or empty folder, unrecognized layout, import failure, bad first feed.
    """
    opts: dict[str, Any] = {
        "expected_dtypes": expected_dtypes,
        "expected_shapes": expected_shapes,
        "limit": limit,
    }
    text = os.fspath(spec)
    path = Path(text)
    source: _Validated
    if path.is_dir():
        has_sets = bool(_input_pbs(path)) or any(p.is_dir() for p in path.glob("test_data_set_*"))
        has_numpy = any(p.suffix in (".npz", ".npy") for p in path.iterdir()) or any(
            p.is_dir() and any(p.glob("*.npy"))
            for p in path.iterdir()
            if not p.name.startswith("test_data_set_")
        )
        if has_sets and has_numpy:
            raise UsageError(
                f"calibration folder {path} mixes test_data_set_* folders with .npy/.npz files",
                hint="keep one layout per folder",
            )
        if has_sets:
            source = TestDataSetSource(path, input_names, **opts)
        elif has_numpy:
            source = NumpyDirectorySource(path, input_names, **opts)
        elif not any(path.iterdir()):
            raise UsageError(f"calibration folder {path} is empty", hint=_HINT_LAYOUT)
        else:
            raise UsageError(
                f"calibration folder {path} holds no calibration files", hint=_HINT_LAYOUT
            )
    elif path.is_file():
        if path.suffix != ".npz":
            raise UsageError(f"calibration file {path} is not a .npz file", hint=_HINT_LAYOUT)
        source = NumpyDirectorySource(path, input_names, **opts)
    elif ":" in text and not text.endswith(":"):
        source = FunctionSource(text, input_names, **opts)
        check_first = False
    else:
        raise UsageError(f"calibration folder {text} not found", hint=_HINT_LAYOUT)
    if check_first:
        for _ in source:
            break
    logger.info("calibration: %s from %s", type(source).__name__, text)
    return source


# ------------------------------------------------------------------------ activation capture


def _externalized(proto: onnx.ModelProto, folder: str, location: str) -> onnx.ModelProto:
    """A copy of `proto` whose raw initializers (>= 1 KiB) are written to ``folder/location``.

    Written one tensor at a time, so memory stays at the graph skeleton; unlike
    ``onnx.save_model(save_as_external_data=True)``, the caller's model is not modified.
    """
    skel = onnx.ModelProto()
    copy_fields(skel, proto, skip="graph")
    g, src = skel.graph, proto.graph
    copy_fields(g, src, skip="initializer")
    offset = 0
    with open(os.path.join(folder, location), "wb") as f:
        for t in src.initializer:
            if not t.HasField("raw_data") or len(t.raw_data) < _EXTERNAL_MIN_BYTES:
                g.initializer.add().CopyFrom(t)
                continue
            new = g.initializer.add()
            new.name, new.data_type = t.name, t.data_type
            new.dims.extend(t.dims)
            f.write(t.raw_data)
            for key, val in (
                ("location", location),
                ("offset", str(offset)),
                ("length", str(len(t.raw_data))),
            ):
                entry = new.external_data.add()
                entry.key, entry.value = key, val
            new.data_location = onnx.TensorProto.EXTERNAL
            offset += len(t.raw_data)
    return skel


def _used_names(g: onnx.GraphProto) -> set[str]:
    """Every tensor name a node of `g` (or of its subgraphs) reads, and the graph's outputs."""
    from spa_compiler.protos import graphs

    return {o.name for o in g.output} | {x for gg in graphs(g) for n in gg.node for x in n.input}


def keep_only(g: onnx.GraphProto, names: Sequence[str], stop: Iterable[str] = ()) -> None:
    """Make `names` the graph's only outputs and drop the nodes none of them depends on (`stop`:
    tensors whose producers are not followed: they will be fed)."""
    wanted = set(names)
    stops = set(stop)
    outs = [o for o in g.output if o.name in wanted]
    del g.output[:]
    g.output.extend(outs)
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    need: set[int] = set()
    stack = [producer[n] for n in wanted if n in producer]
    while stack:
        i = stack.pop()
        if i in need:
            continue
        need.add(i)
        node = g.node[i]
        deps = list(node.input)
        for a in node.attribute:  # subgraphs read outer-scope tensors
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                deps.extend(x for n2 in sub.node for x in n2.input)
        stack.extend(producer[d] for d in deps if d in producer and d not in stops)
    kept = [n for i, n in enumerate(g.node) if i in need]
    del g.node[:]
    g.node.extend(kept)


class ActivationCollector:
    """Capture intermediate tensors of a model on calibration feeds (ONNX Runtime, CPU).

    The model is copied, shape-inferred (for the tensors' element types; shapes are not required),
    and the requested tensors are appended to its graph outputs. ONNX Runtime runs with graph
    optimizations disabled so that no requested tensor is fused away. Memory: ONNX Runtime's copy of
    the weights plus one feed's activations (a ModelIR's copy is its weightless export, its arrays
    go to ONNX Runtime as external initializers; a ModelProto is copied, about twice the model while
    the session is built).

    Example:
        >>> collector = ActivationCollector(model_proto, ["h"])
        >>> for acts in collector.collect(load_calibration("calib/", collector.input_names)):
        ...     acc.add_batch(acts["h"])

    Attributes:
        tensor_names: The captured tensors, in the order asked.
        input_names: The model's real inputs (what each feed must provide).
    """

    def __init__(
        self,
        model: onnx.ModelProto | ModelIR,
        tensor_names: Sequence[str],
        *,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        prune: bool = False,
        fed: Sequence[str] = (),
    ) -> None:
        """Build the session.

        Args:
            model: The model (not modified).
            tensor_names: Tensors to capture: node outputs, graph inputs or graph outputs.
            threads: ORT intra-op threads (None: ORT's default).
            providers: ORT execution providers.
            prune: Keep only the requested tensors as outputs and only the nodes they depend on
                (a prefix of the model runs when they are early ones).
            fed: Intermediate tensors given with each feed instead of computed (with `prune`: a
                cut through the graph, e.g. values captured by an earlier run; the nodes only they
                depend on are dropped). They join `input_names`.

        Raises:
            PreconditionError: A name is not a tensor of the main graph.
            InvalidModelError: ONNX Runtime refuses the model.
        """
        from spa_compiler.ort import add_initializers, import_ort

        ort = import_ort()

        weights: dict[str, npt.NDArray[Any]] = {}
        if isinstance(model, ModelIR):
            proto, weights = model.to_proto_split()
        else:
            proto = model
        self.tensor_names = tuple(dict.fromkeys(tensor_names))
        self._prune = prune
        self._fed = tuple(dict.fromkeys(fed))
        if self._fed and not prune:
            raise ValueError("fed tensors need prune=True")
        if not self.tensor_names:
            raise ValueError("ActivationCollector needs at least one tensor name")
        self.input_names = [s.name for s in model_inputs(proto)]
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._session: Any = None

        if proto.ByteSize() > _MAX_INLINE_BYTES:
            self._tmp = tempfile.TemporaryDirectory(prefix="spa_collect_")
            src = os.path.join(self._tmp.name, "model.onnx")
            onnx.save_model(_externalized(proto, self._tmp.name, "model.onnx.data"), src)
            inferred_path = os.path.join(self._tmp.name, "inferred.onnx")
            try:
                onnx.shape_inference.infer_shapes_path(src, inferred_path)
                work = onnx.load_model(inferred_path, load_external_data=False)
            except Exception as e:
                logger.debug("shape inference failed (%s); output types left unknown", e)
                work = onnx.load_model(src, load_external_data=False)
        else:
            try:
                work = onnx.shape_inference.infer_shapes(proto)
            except Exception as e:
                logger.debug("shape inference failed (%s); output types left unknown", e)
                work = onnx.ModelProto()
                work.CopyFrom(proto)
        self._add_outputs(work)
        self.input_names = [s.name for s in model_inputs(work)]
        if prune:  # initializers of dropped nodes go too (ONNX Runtime refuses unused external ones)
            used = _used_names(work.graph)
            keep = [t for t in work.graph.initializer if t.name in used]
            del work.graph.initializer[:]
            work.graph.initializer.extend(keep)
            weights = {k: v for k, v in weights.items() if k in used}
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        if threads is not None:
            so.intra_op_num_threads = threads
        self._weights = add_initializers(so, weights)  # ORT reads them while the session lives
        del weights
        try:
            if self._tmp is not None:
                # saved beside model.onnx.data, which its initializers reference relatively
                path = os.path.join(self._tmp.name, "collect.onnx")
                onnx.save_model(work, path)
                del work
                self._session = ort.InferenceSession(path, so, providers=list(providers))
            else:
                data = work.SerializeToString()
                del work
                self._session = ort.InferenceSession(data, so, providers=list(providers))
        except Exception as e:
            raise InvalidModelError(
                f"ONNX Runtime cannot load the model to collect activations: {e}"
            ) from e

    def _add_outputs(self, work: onnx.ModelProto) -> None:
        g = work.graph
        known: dict[str, onnx.ValueInfoProto] = {}
        for vi in [*g.input, *g.value_info, *g.output]:
            known.setdefault(vi.name, vi)
        produced = {o for n in g.node for o in n.output if o}
        inits = {t.name: t for t in g.initializer}
        present = {o.name for o in g.output}
        missing = [
            n
            for n in self.tensor_names
            if n not in produced and n not in inits and n not in {i.name for i in g.input}
        ]
        if missing:
            raise PreconditionError(
                f"cannot collect {missing}: not a tensor of the model's main graph",
                hint="name node outputs, graph inputs or graph outputs",
            )
        for name in self.tensor_names:
            if name in present:
                continue
            vi = onnx.ValueInfoProto()
            vi.name = name
            src = known.get(name)
            if (
                src is not None
                and src.type.HasField("tensor_type")
                and src.type.tensor_type.elem_type
            ):
                vi.type.tensor_type.elem_type = src.type.tensor_type.elem_type  # shape left unknown
            elif name in inits:
                vi.type.tensor_type.elem_type = inits[name].data_type
            g.output.append(vi)
        if self._prune:
            keep_only(g, self.tensor_names, stop=self._fed)
        if self._fed:
            still = {o for n in g.node for o in n.output} & set(self._fed)
            if still:
                raise PreconditionError(f"cannot feed {sorted(still)[:4]}: kept nodes compute them (not a cut)")
            graph_inputs = {i.name for i in g.input}
            for name in self._fed:
                if name in graph_inputs or name in inits:
                    continue
                vi = onnx.ValueInfoProto()
                vi.name = name
                src = known.get(name)
                if src is None or not src.type.HasField("tensor_type") or not src.type.tensor_type.elem_type:
                    raise PreconditionError(f"cannot feed {name!r}: its element type is unknown")
                vi.type.tensor_type.elem_type = src.type.tensor_type.elem_type
                g.input.append(vi)

    def run(self, feed: Mapping[str, npt.ArrayLike]) -> dict[str, npt.NDArray[Any]]:
        """The requested tensors for one feed.

        Raises:
            UsageError: the feed lacks a model input, or ONNX Runtime rejects it (dtype, shape).
        """
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise UsageError(
                f"calibration feed lacks input(s) {missing}",
                hint=f"the model's inputs are {self.input_names}",
            )
        inputs = {n: np.asarray(feed[n]) for n in self.input_names}
        try:
            values = self._session.run(list(self.tensor_names), inputs)
        except Exception as e:
            raise UsageError(
                f"ONNX Runtime rejected a calibration feed: {' '.join(str(e).split())}"
            ) from e
        return dict(zip(self.tensor_names, values, strict=True))

    def collect(
        self, feeds: Iterable[Mapping[str, npt.ArrayLike]]
    ) -> Iterator[dict[str, npt.NDArray[Any]]]:
        """Yield the requested tensors feed by feed (one feed's activations alive at a time)."""
        for feed in feeds:
            yield self.run(feed)

    def close(self) -> None:
        """Release the session and any temporary files."""
        self._session = None
        self._weights = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> ActivationCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
