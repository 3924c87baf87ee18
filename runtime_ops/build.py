"""Build the runtime_ops libraries with CMake: `python -m spa_compiler.runtime_ops.build`.

    python -m spa_compiler.runtime_ops.build               # CPU ORT library + TensorRT plugins
    python -m spa_compiler.runtime_ops.build --cuda        # + CUDA kernels (sm_90 SASS + PTX)
    python -m spa_compiler.runtime_ops.build --no-trt      # CPU ORT library only

Headers come from SPA_ORT_INCLUDE / SPA_TRT_INCLUDE / SPA_CUSPARSELT_ROOT, else are fetched once
(`common/headers.py`). The libraries land in `runtime_ops.library_dir()` (a folder per source hash,
so an edited kernel is rebuilt and an unchanged one is not); `ort_library_path()` and
`trt_plugin_path()` find them there. Without cmake or a C++ compiler the build fails with a
MissingRequirementError, and `runtime_ops.decompose(model)` still gives the standard-ONNX form.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from spa_compiler.errors import MissingRequirementError, SpaError

from . import ORT_CUDA_LIBRARY, ORT_LIBRARY, TRT_LIBRARY, library_dir
from .common import headers

SOURCE_DIR = Path(__file__).resolve().parent


def have_toolchain() -> str | None:
    """None when cmake and a C++ compiler are present, else what is missing."""
    if not shutil.which("cmake"):
        return "cmake"
    if not (
        os.environ.get("CXX")
        or shutil.which("c++")
        or shutil.which("g++")
        or shutil.which("clang++")
    ):
        return "a C++ compiler (c++, g++ or clang++)"
    return None


def find_nvcc() -> str | None:
    """nvcc on PATH, else under CUDA_HOME or /usr/local/cuda."""
    for cand in (
        shutil.which("nvcc"),
        os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "nvcc"),
        "/usr/local/cuda/bin/nvcc",
    ):
        if cand and os.path.isfile(cand):
            return cand
    return None


def build(
    *,
    cuda: bool = False,
    trt: bool = True,
    out_dir: str | os.PathLike[str] | None = None,
    cuda_archs: str = "90",
    native: bool = True,
    jobs: int | None = None,
    force: bool = False,
    verbose: bool = False,
) -> dict[str, Path]:
    """Configure, build and install the libraries; returns {library file name: path}.

    Args:
        cuda: Also build the CUDA kernels (libspa_ort_ops_cuda.so; the TensorRT plugins then run
            on the GPU). Needs nvcc and cuSPARSELt.
        trt: Build libspa_trt_plugins.so (needs the TensorRT headers, fetched if absent).
        out_dir: Where the libraries go (default `library_dir()`).
        cuda_archs: SASS targets, ';'-separated (PTX of the last is embedded too), e.g. "80;90".
        native: -march=native for the CPU kernels (the library then runs on this CPU family).
        jobs: Parallel build jobs (default: all cores).
        force: Rebuild even if the libraries exist.
        verbose: Stream CMake's output.

    Raises:
        MissingRequirementError: no cmake/compiler/nvcc, or headers that could not be found/fetched.
        SpaError: the build itself failed (the tail of its log is in the message).
    """
    missing = have_toolchain()
    if missing:
        raise MissingRequirementError(
            f"building runtime_ops needs {missing}",
            hint="install cmake and g++ (apt-get install cmake g++), or use runtime_ops.decompose(model)",
        )
    out = Path(out_dir) if out_dir else library_dir()
    wanted = [ORT_LIBRARY] + ([ORT_CUDA_LIBRARY] if cuda else []) + ([TRT_LIBRARY] if trt else [])
    if not force and all((out / w).is_file() for w in wanted):
        return {w: out / w for w in wanted}
    defs = {
        "SPA_ORT_INCLUDE": str(headers.ort_include()),
        "SPA_WITH_CUDA": "ON" if cuda else "OFF",
        "SPA_WITH_TRT": "ON" if trt else "OFF",
        "SPA_NATIVE": "ON" if native else "OFF",
        "CMAKE_BUILD_TYPE": "Release",
        "CMAKE_INSTALL_PREFIX": str(out),
    }
    if trt:
        defs["SPA_TRT_INCLUDE"] = str(headers.trt_include())
    if cuda:
        nvcc = find_nvcc()
        if not nvcc:
            raise MissingRequirementError(
                "--cuda needs nvcc", hint="install the CUDA toolkit or set CUDA_HOME"
            )
        defs["CMAKE_CUDA_COMPILER"] = nvcc
        defs["SPA_CUSPARSELT_ROOT"] = str(headers.cusparselt_root())
        defs["SPA_CUDA_ARCHS"] = cuda_archs
    build_dir = out / "build"
    build_dir.mkdir(parents=True, exist_ok=True)
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    cfg = ["cmake", "-S", str(SOURCE_DIR), "-B", str(build_dir), *gen] + [
        f"-D{k}={v}" for k, v in defs.items()
    ]
    _step(cfg, "configure", verbose)
    _step(
        ["cmake", "--build", str(build_dir), "-j", str(jobs or os.cpu_count() or 2)],
        "build",
        verbose,
    )
    _step(["cmake", "--install", str(build_dir)], "install", verbose)
    missing_libs = [w for w in wanted if not (out / w).is_file()]
    if missing_libs:
        raise SpaError(f"build finished but {missing_libs} are missing in {out}")
    return {w: out / w for w in wanted}


def _step(cmd: list[str], what: str, verbose: bool) -> None:
    if verbose:
        r = subprocess.run(cmd, check=False)
        if r.returncode:
            raise SpaError(f"runtime_ops {what} failed (exit {r.returncode}): {' '.join(cmd)}")
        return
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode:
        log = (r.stdout + r.stderr).strip().splitlines()
        errs = [ln for ln in log if "error" in ln.lower()] or log
        raise SpaError(
            f"runtime_ops {what} failed (exit {r.returncode}): " + " | ".join(errs[-8:])[-1500:],
            hint="run python -m spa_compiler.runtime_ops.build --verbose for the whole log",
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m spa_compiler.runtime_ops.build", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--cuda", action="store_true", help="also build the CUDA kernels (nvcc, cuSPARSELt)"
    )
    ap.add_argument("--no-trt", action="store_true", help="skip the TensorRT plugin library")
    ap.add_argument(
        "--out", help="output folder (default: the cache folder ort_library_path() reads)"
    )
    ap.add_argument("--cuda-archs", default="90", help="SASS targets, ';'-separated (default 90)")
    ap.add_argument("--portable", action="store_true", help="no -march=native")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    try:
        libs = build(
            cuda=a.cuda, trt=not a.no_trt, out_dir=a.out, cuda_archs=a.cuda_archs,
            native=not a.portable, force=a.force, verbose=a.verbose,
        )  # fmt: skip
    except SpaError as e:
        print(f"error: {e.one_line()}", file=sys.stderr)
        return 2
    for name, path in libs.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
