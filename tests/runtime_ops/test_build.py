"""The build entry point's error paths and header lookup (no compilation here)."""

from __future__ import annotations

import pytest

from spa_compiler.errors import MissingRequirementError
from spa_compiler.runtime_ops import build as build_mod
from spa_compiler.runtime_ops.common import headers


def test_user_header_folders_are_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("SPA_ORT_INCLUDE", str(tmp_path))
    with pytest.raises(MissingRequirementError, match="onnxruntime_lite_custom_op.h"):
        headers.ort_include()
    (tmp_path / "onnxruntime_lite_custom_op.h").write_text("")
    assert headers.ort_include() == tmp_path
    monkeypatch.setenv("SPA_TRT_INCLUDE", str(tmp_path))
    with pytest.raises(MissingRequirementError, match="NvInferRuntime.h"):
        headers.trt_include()
    monkeypatch.setenv("SPA_CUSPARSELT_ROOT", str(tmp_path))
    with pytest.raises(MissingRequirementError, match="cusparseLt.h"):
        headers.cusparselt_root()


def test_no_toolchain_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(build_mod.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert build_mod.have_toolchain() == "cmake"
    with pytest.raises(MissingRequirementError, match="needs cmake") as e:
        build_mod.build()
    assert "decompose" in (e.value.hint or "")


def test_cli_reports_errors_without_a_traceback(monkeypatch, capsys):
    monkeypatch.setattr(build_mod.shutil, "which", lambda name: None)
    assert build_mod.main([]) == 2
    assert "error: building runtime_ops needs cmake" in capsys.readouterr().err
