"""Every file a run writes is checked before any work, and written atomically with the usual mode.

`check_outputs` refuses, as a usage error (exit 2, one line), any output path that

* is the input model or one of its external-data files (the input is never modified),
* is another output of the same run (`--report` naming the `-o` file),
* is a directory or an existing non-regular file (a device, a pipe: an atomic rename would replace
  the device node itself),
* lies in a folder that does not exist, is not a folder, or cannot be written (read-only mount,
  /proc, permissions): found by creating and removing a temporary file there, the only test that
  answers for every file system,
* or lies on a file system with less free space than the run is expected to write.

`create_temp` / `finish_temp` give temporary files beside a destination with the mode a plain
`open()` would give (0666 less the umask), not mkstemp's 0600, so reports and tables get the same
mode as the model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from spa_compiler.errors import OutputError, UsageError

#: Prefix of every temporary file and folder the tool creates beside its outputs.
TEMP_PREFIX = ".spa-tmp-"


def default_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0o666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists() and os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return os.path.abspath(a) == os.path.abspath(b) or a.resolve() == b.resolve()


def input_files(model_path: Path) -> list[Path]:
    """The input model and the external-data files it references (those that exist)."""
    files = [model_path]
    try:
        import onnx

        proto = onnx.load(str(model_path), load_external_data=False)
        for t in onnx.external_data_helper._get_all_tensors(proto):
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            loc = {e.key: e.value for e in t.external_data}.get("location")
            if loc:
                p = model_path.parent / loc
                if p.is_file() and all(not _same(p, f) for f in files):
                    files.append(p)
    except Exception:  # an unreadable input is reported by the loader, with exit 3
        pass
    return files


def check_outputs(
    inputs: Iterable[str | os.PathLike[str] | None],
    outputs: Mapping[str, str | os.PathLike[str] | None],
    *,
    expected_bytes: int = 0,
) -> None:
    """Refuse outputs that would overwrite an input or each other, or cannot be written.

    Args:
        inputs: What the run reads: the model first (its external data is found here), then any
            other input file or folder (latency table, calibration data; None entries skipped).
            An existing file inside an input folder is an input too.
        outputs: What each output is (as the user named it, e.g. "--report") -> its path; None
            entries (not asked for) are skipped.
        expected_bytes: Bytes the run will write (about the input's size); a file system with
            less free space is refused before any work.

    Raises:
        UsageError: the first problem found, naming the flag and the path.
    """
    ins: list[Path] = []
    in_dirs: list[Path] = []
    # an output that does not exist yet cannot be one of the input's external-data files: read the
    # input's references (which imports onnx) only when some output exists already
    existing = any(o is not None and Path(o).exists() for o in outputs.values())
    for k, p in enumerate(inputs):
        if p is None or (k and ":" in str(p) and not Path(p).exists()):  # skip module:function specs
            continue
        path = Path(p)
        if k and path.is_dir():
            in_dirs.append(path)
            continue
        ins.extend(input_files(path) if existing and k == 0 and path.is_file() else [path])
    seen: dict[str, Path] = {}
    folders: dict[Path, str] = {}
    for label, raw in outputs.items():
        if raw is None:
            continue
        path = Path(raw)
        for src in ins:
            if _same(path, src):
                what = "the input model" if src == ins[0] else "an input of this run"
                raise UsageError(
                    f"{label} {path} is {what}; the input is never modified",
                    hint=f"choose another {label} path",
                )
        for folder in in_dirs:
            if path.is_file() and folder.resolve() in path.resolve().parents:
                raise UsageError(
                    f"{label} {path} is a file in the input folder {folder}; inputs are never modified",
                    hint=f"choose another {label} path",
                )
        for other_label, other in seen.items():
            if _same(path, other):
                raise UsageError(
                    f"{label} and {other_label} name the same file {path}",
                    hint=f"give {label} a path of its own",
                )
        seen[label] = path
        if path.is_dir():
            raise UsageError(f"{label} {path} is a directory", hint="give a file name")
        if path.exists() and not path.is_file():
            raise UsageError(
                f"{label} {path} exists and is not a regular file (a device or a pipe)",
                hint="give the path of a regular file; outputs are written beside it and renamed into place",
            )
        parent = path.parent if str(path.parent) else Path(".")
        if parent not in folders:
            _check_folder(parent, label, path)
            folders[parent] = label
    if expected_bytes > 0:
        for parent, label in folders.items():
            try:
                free = shutil.disk_usage(parent).free
            except OSError:
                continue
            if free < expected_bytes:
                raise UsageError(
                    f"{label}: the file system of {parent} has {free / 1e6:.1f} MB free, the run writes "
                    f"about {expected_bytes / 1e6:.1f} MB",
                    hint="free some space or write elsewhere",
                )


def _check_folder(parent: Path, label: str, path: Path) -> None:
    if not parent.exists():
        raise UsageError(f"{label} {path}: the folder {parent} does not exist", hint="create it first")
    if not parent.is_dir():
        raise UsageError(f"{label} {path}: {parent} is not a folder", hint=f"choose another {label} path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=parent)
    except OSError as e:
        raise UsageError(
            f"{label} {path}: cannot write in {parent} ({e.strerror or e})",
            hint="choose a writable folder",
        ) from e
    try:
        os.write(fd, b"\0")
    except OSError as e:
        raise UsageError(
            f"{label} {path}: cannot write in {parent} ({e.strerror or e})", hint="choose a writable folder"
        ) from e
    finally:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file beside it and a rename (mode 0666 - umask).

    Raises:
        OutputError: the write failed (disk full, permissions); nothing is left behind.
    """
    from spa_compiler.signals import deferred

    parent = path.parent if str(path.parent) else Path(".")
    tmp: str | None = None
    try:
        with deferred():  # a signal comes after the assignment, so the file is removed below
            try:
                fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=parent)
            except OSError as e:
                raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
        try:
            os.fchmod(fd, default_mode())
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except OSError as e:
            raise OutputError(f"cannot write {path}: {e.strerror or e}", hint="check free space") from e
        with deferred():
            os.replace(tmp, path)
            tmp = None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
