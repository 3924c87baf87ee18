"""Find, or fetch, the third-party headers the libraries build against.

| what | environment variable (your copy) | else | else fetched |
| --- | --- | --- | --- |
| ONNX Runtime C/C++ API | `SPA_ORT_INCLUDE` (folder with onnxruntime_lite_custom_op.h) | /usr/include/onnxruntime | Debian's `libonnxruntime-dev` (the system's suite, then trixie) with apt-get download + dpkg -x |
| TensorRT (NvInfer*.h) | `SPA_TRT_INCLUDE` | /usr/include/x86_64-linux-gnu | the `kernel-lens` source package on PyPI (TensorRT 10.14 headers) |
| cuSPARSELt | `SPA_CUSPARSELT_ROOT` (include/, lib/) | the `nvidia.cusparselt` Python package | the `nvidia-cusparselt-cu13` wheel from PyPI |

Fetched files go to `<cache>/headers/` (see `cache_dir`); each fetch happens once. The ORT headers
must not be newer than the ONNX Runtime that loads the library (Debian trixie ships 1.21; ORT
refuses a library asking for a newer API version).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from spa_compiler.errors import MissingRequirementError

KERNEL_LENS = "kernel-lens==2.0.1"
CUSPARSELT_WHEEL = "nvidia-cusparselt-cu13"
DEBIAN_SUITE = "trixie"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def cache_dir() -> Path:
    """$SPA_RUNTIME_OPS_CACHE, else ~/.cache/spa-compiler (XDG_CACHE_HOME respected)."""
    env = os.environ.get("SPA_RUNTIME_OPS_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spa-compiler"


def _run(cmd: list[str], cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


# ---------------------------------------------------------------------- ONNX Runtime
def ort_include() -> Path:
    """The folder holding onnxruntime_cxx_api.h and onnxruntime_lite_custom_op.h."""
    want = "onnxruntime_lite_custom_op.h"
    env = os.environ.get("SPA_ORT_INCLUDE")
    if env:
        if not (Path(env) / want).is_file():
            raise MissingRequirementError(f"SPA_ORT_INCLUDE={env} has no {want}")
        return Path(env)
    fetched = cache_dir() / "headers" / "libonnxruntime-dev" / "usr" / "include" / "onnxruntime"
    for cand in (fetched, Path("/usr/include/onnxruntime"), Path("/usr/local/include/onnxruntime")):
        if (cand / want).is_file():
            return cand
    _fetch_debian("libonnxruntime-dev", fetched.parents[2])
    if not (fetched / want).is_file():
        raise MissingRequirementError(
            f"libonnxruntime-dev unpacked but {fetched / want} is missing"
        )
    return fetched


def _debian_mirror() -> str | None:
    src = Path("/etc/apt/sources.list.d/debian.sources")
    if src.is_file():
        for line in src.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    lst = Path("/etc/apt/sources.list")
    if lst.is_file():
        for line in lst.read_text().splitlines():
            if line.startswith("deb "):
                parts = [p for p in line.split() if not p.startswith("[")]
                return parts[1] if len(parts) > 1 else None
    return None


def _fetch_debian(package: str, dest: Path) -> None:
    """apt-get download `package` (system suite, else Debian trixie) and dpkg -x it into dest."""
    hint = (
        "set SPA_ORT_INCLUDE to a folder with the ONNX Runtime C/C++ API headers (e.g. include/ of "
        "an onnxruntime-linux-x64 release archive, version <= the onnxruntime you run)"
    )
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        raise MissingRequirementError(
            f"the ONNX Runtime headers are not here and {package} cannot be fetched "
            "(no apt-get/dpkg on this system)",
            hint=hint,
        )
    with tempfile.TemporaryDirectory(prefix="spa-apt-") as work:
        errors: list[str] = []
        debs = _apt_download(package, Path(work), None, errors)
        if not debs:
            mirror = _debian_mirror()
            if mirror and Path(DEBIAN_KEYRING).is_file():
                debs = _apt_download(package, Path(work), mirror, errors)
        if not debs:
            raise MissingRequirementError(
                f"could not download {package}: " + " | ".join(e for e in errors if e)[-600:],
                hint=hint,
            )
        dest.mkdir(parents=True, exist_ok=True)
        r = _run(["dpkg", "-x", debs[0], str(dest)])
        if r.returncode:
            raise MissingRequirementError(
                f"dpkg -x {debs[0]} failed: {r.stderr.strip()}", hint=hint
            )


def _apt_download(package: str, work: Path, mirror: str | None, errors: list[str]) -> list[str]:
    """Download into `work`: with mirror=None from the system's own sources (lists as they are),
    else from Debian `DEBIAN_SUITE` on that mirror with private lists (system untouched)."""
    out = work / ("trixie" if mirror else "system")
    out.mkdir(parents=True, exist_ok=True)
    opts: list[str] = []
    if mirror:
        lists, cache = work / "lists", work / "cache"
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        (cache / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        sources = work / "sources.list"
        sources.write_text(f"deb [signed-by={DEBIAN_KEYRING}] {mirror} {DEBIAN_SUITE} main\n")
        opts = [
            "-o", f"Dir::Etc::SourceList={sources}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={lists}",
            "-o", f"Dir::Cache={cache}",
        ]  # fmt: skip
        r = _run(["apt-get", *opts, "-qq", "update"])
        if r.returncode:
            errors.append(f"apt-get update ({DEBIAN_SUITE}): {r.stderr.strip()[-300:]}")
            return []
    r = _run(["apt-get", *opts, "-qq", "download", package], cwd=out)
    if r.returncode:
        errors.append(
            f"apt-get download ({'trixie' if mirror else 'system'}): {r.stderr.strip()[-300:]}"
        )
    return sorted(glob.glob(str(out / f"{package}_*.deb")))


# ---------------------------------------------------------------------- TensorRT
def trt_include() -> Path:
    """The folder holding NvInferRuntime.h (TensorRT >= 10)."""
    want = "NvInferRuntime.h"
    env = os.environ.get("SPA_TRT_INCLUDE")
    if env:
        if not (Path(env) / want).is_file():
            raise MissingRequirementError(f"SPA_TRT_INCLUDE={env} has no {want}")
        return Path(env)
    fetched = cache_dir() / "headers" / "kernel_lens" / "include" / "tensorrt"
    for cand in (fetched, Path("/usr/include/x86_64-linux-gnu"), Path("/usr/include")):
        if (cand / want).is_file() and (cand / "NvInfer.h").is_file():
            return cand
    with tempfile.TemporaryDirectory(prefix="spa-trt-") as work:
        r = _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                  "-d", work, KERNEL_LENS])  # fmt: skip
        sdists = glob.glob(os.path.join(work, "kernel_lens-*.tar.gz"))
        if r.returncode or not sdists:
            raise MissingRequirementError(
                f"could not fetch the TensorRT headers ({KERNEL_LENS} from PyPI): "
                f"{r.stderr.strip()[-400:]}",
                hint="set SPA_TRT_INCLUDE to your TensorRT's include folder",
            )
        with tarfile.open(sdists[0]) as tar:
            members = [
                m
                for m in tar.getmembers()
                if "/kernel_lens/include/tensorrt/" in m.name and m.isfile()
            ]
            fetched.mkdir(parents=True, exist_ok=True)
            for m in members:
                f = tar.extractfile(m)
                if f is not None:
                    (fetched / Path(m.name).name).write_bytes(f.read())
    if not (fetched / want).is_file():
        raise MissingRequirementError(f"{KERNEL_LENS} unpacked but has no {want}")
    return fetched


# ---------------------------------------------------------------------- cuSPARSELt
def cusparselt_root() -> Path:
    """A folder with include/cusparseLt.h and lib/libcusparseLt.so*."""

    def ok(p: Path) -> bool:
        return (p / "include" / "cusparseLt.h").is_file() and bool(
            glob.glob(str(p / "lib" / "libcusparseLt.so*"))
        )

    env = os.environ.get("SPA_CUSPARSELT_ROOT")
    if env:
        if not ok(Path(env)):
            raise MissingRequirementError(
                f"SPA_CUSPARSELT_ROOT={env} has no include/cusparseLt.h + lib/"
            )
        return Path(env)
    # pip's nvidia-cusparselt-cu12 puts it in nvidia/cusparselt, -cu13 (0.10) in nvidia/cu13
    try:
        import nvidia  # type: ignore[import-not-found]

        for base in list(getattr(nvidia, "__path__", [])):
            for sub in ("cusparselt", "cu13", "cu12"):
                if ok(Path(base) / sub):
                    return Path(base) / sub
    except ImportError:
        pass
    fetched = cache_dir() / "headers" / "cusparselt"
    if ok(fetched):
        return fetched
    with tempfile.TemporaryDirectory(prefix="spa-cslt-") as work:
        r = _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                  "-d", work, CUSPARSELT_WHEEL])  # fmt: skip
        wheels = glob.glob(os.path.join(work, "nvidia_cusparselt*.whl"))
        if r.returncode or not wheels:
            raise MissingRequirementError(
                f"could not fetch cuSPARSELt ({CUSPARSELT_WHEEL} from PyPI): {r.stderr.strip()[-400:]}",
                hint="set SPA_CUSPARSELT_ROOT to a folder with include/cusparseLt.h and lib/",
            )
        with zipfile.ZipFile(wheels[0]) as z:
            heads = [n for n in z.namelist() if n.endswith("/include/cusparseLt.h")]
            if not heads:
                raise MissingRequirementError(f"{wheels[0]} holds no include/cusparseLt.h")
            prefix = heads[0][: -len("include/cusparseLt.h")]  # e.g. nvidia/cu13/
            for name in z.namelist():
                rel = name[len(prefix) :] if name.startswith(prefix) else ""
                if rel.startswith(("include/", "lib/")) and not name.endswith("/"):
                    target = fetched / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(name))
    if not ok(fetched):
        raise MissingRequirementError(f"{CUSPARSELT_WHEEL} unpacked but has no include/ + lib/")
    return fetched
