"""The CLI's promises: one-line errors with the right exit code, the input never modified,
nothing half-written left behind; and the README's commands work."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from spa_compiler.cli import main
from tests.helpers import conv_chain_model, make_model


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("spa-compile: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _no_leftovers(folder: Path, allowed: set[str]) -> None:
    names = {p.name for p in folder.iterdir()}
    assert names <= allowed, names - allowed


@pytest.fixture
def chain_path(tmp_path: Path, rng: np.random.Generator) -> Path:
    p = tmp_path / "model.onnx"
    onnx.save(conv_chain_model(rng), p)
    return p


def test_compile_ok_writes_output_and_report(tmp_path: Path, chain_path: Path, capsys) -> None:
    before = _digest(chain_path)
    out = tmp_path / "out.onnx"
    report = tmp_path / "report.json"
    code, stdout, _ = _run(capsys, str(chain_path), "-o", str(out), "--report", str(report), "--runs", "5")
    assert code == 0
    assert _digest(chain_path) == before
    data = json.loads(report.read_text())
    assert data["status"] == "ok"
    assert data["after"]["params"] < data["before"]["params"]
    assert data["before"]["latency_ms"] > 0 and data["after"]["latency_ms"] > 0
    assert [p["name"] for p in data["passes"]] == ["cleanup", "prune-to-budget", "cleanup"]
    assert "latency" in stdout
    onnx.checker.check_model(str(out), full_check=True)
    _no_leftovers(tmp_path, {"model.onnx", "out.onnx", "report.json"})


@pytest.mark.parametrize("kind", ["missing", "directory", "not-onnx", "truncated", "empty", "invalid-graph"])
def test_bad_model_files_exit_3(tmp_path: Path, capsys, kind: str, rng: np.random.Generator) -> None:
    p = tmp_path / "bad.onnx"
    if kind == "directory":
        p.mkdir()
    elif kind == "not-onnx":
        p.write_text("this is not an ONNX model\n" * 20)
    elif kind == "truncated":
        data = conv_chain_model(rng).SerializeToString()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "invalid-graph":
        m = conv_chain_model(rng)
        m.graph.node[1].input[0] = "does_not_exist"
        p.write_bytes(m.SerializeToString())
    before = _digest(p) if p.is_file() else None
    code, _, err = _run(capsys, str(p), "-o", str(tmp_path / "out.onnx"))
    assert code == 3, err
    _assert_one_line_error(err, "to fix:")
    if before is not None:
        assert _digest(p) == before
    assert not (tmp_path / "out.onnx").exists()
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".spa-tmp")]


def test_missing_external_data_exit_3(tmp_path: Path, capsys, rng: np.random.Generator) -> None:
    m = conv_chain_model(rng)
    p = tmp_path / "ext.onnx"
    onnx.save_model(m, p, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    (tmp_path / "ext.onnx.data").unlink()
    before = _digest(p)
    code, _, err = _run(capsys, str(p), "-o", str(tmp_path / "out.onnx"))
    assert code == 3
    _assert_one_line_error(err, "ext.onnx.data", "missing")
    assert _digest(p) == before
    _no_leftovers(tmp_path, {"ext.onnx"})


def test_truncated_external_data_exit_3(tmp_path: Path, capsys, rng: np.random.Generator) -> None:
    p = tmp_path / "ext.onnx"
    onnx.save_model(conv_chain_model(rng), p, save_as_external_data=True, location="d.bin", size_threshold=0)
    data = tmp_path / "d.bin"
    data.write_bytes(data.read_bytes()[:100])
    code, _, err = _run(capsys, str(p), "-o", str(tmp_path / "out.onnx"))
    assert code == 3
    _assert_one_line_error(err, "truncated")


def test_opset_out_of_range_exit_3(tmp_path: Path, capsys) -> None:
    m = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        opset=9,
        ir_version=4,
    )
    p = tmp_path / "old.onnx"
    onnx.save(m, p)
    code, _, err = _run(capsys, str(p), "-o", str(tmp_path / "out.onnx"))
    assert code == 3
    _assert_one_line_error(err, "opset 9", "opset_version")


def test_symbolic_input_without_hint_exit_2(tmp_path: Path, capsys, rng: np.random.Generator) -> None:
    m = conv_chain_model(rng)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    p = tmp_path / "dyn.onnx"
    onnx.save(m, p)
    code, _, err = _run(capsys, str(p), "-o", str(tmp_path / "out.onnx"))
    assert code == 2
    _assert_one_line_error(err, "'x'", "--input-shape x:Nx3x8x8")
    # with the hint it compiles, and the output keeps the symbolic dimension
    code, _, err = _run(capsys, str(p), "-o", str(tmp_path / "out.onnx"), "--input-shape", "x:2x3x8x8",
                        "--runs", "3")
    assert code == 0, err
    out = onnx.load(tmp_path / "out.onnx")
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_output_equal_to_input_exit_2(chain_path: Path, capsys) -> None:
    before = _digest(chain_path)
    code, _, err = _run(capsys, str(chain_path), "-o", str(chain_path))
    assert code == 2
    _assert_one_line_error(err, "input is never modified")
    assert _digest(chain_path) == before
    # the same file through another spelling of the path
    other = chain_path.parent / "." / chain_path.name
    code, _, err = _run(capsys, str(chain_path), "-o", str(other))
    assert code == 2
    assert _digest(chain_path) == before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-p", "prune-unifrm"], "did you mean 'prune-uniform'"),
        (["-p", "prune-uniform{ratio=abc}"], "expected float"),
        (["-p", "prune-uniform{bogus=1}"], "no option 'bogus'"),
        (["-p", "prune-magnitude{bogus=1}"], "no option 'bogus'"),
        (["--latency-budget", "fast"], "latency budget"),
        (["--latency-budget", "1.5x"], "slower than the dense model"),
        (["--target", "tpu"], "unknown target"),
        (["--input-shape", "x:1xAx3"], "--input-shape"),
        (["--input-shape", "nope:1x3x8x8"], "names no model input"),
        (["--preset", "nope"], "unknown preset"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, chain_path: Path, capsys, args: list[str], needle: str) -> None:
    code, _, err = _run(capsys, str(chain_path), "-o", str(tmp_path / "o.onnx"), *args)
    assert code == 2, err
    _assert_one_line_error(err, needle)
    assert not (tmp_path / "o.onnx").exists()


def test_unknown_flag_is_one_line_exit_2(capsys) -> None:
    code, _, err = _run(capsys, "compile", "--frobnicate")
    assert code == 2
    _assert_one_line_error(err)


def test_pass_precondition_error_exit_2(tmp_path: Path, chain_path: Path, capsys) -> None:
    code, _, err = _run(capsys, str(chain_path), "-o", str(tmp_path / "o.onnx"), "-p", "prune-uniform{ratio=1.5}")
    assert code == 2
    _assert_one_line_error(err, "ratio must be in [0, 1)")


def test_report_written_on_failure(tmp_path: Path, capsys, rng: np.random.Generator) -> None:
    m = conv_chain_model(rng)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    p = tmp_path / "dyn.onnx"
    onnx.save(m, p)
    rep = tmp_path / "r.json"
    code, _, _ = _run(capsys, str(p), "-o", str(tmp_path / "o.onnx"), "--report", str(rep))
    assert code == 2
    data = json.loads(rep.read_text())
    assert data["status"] == "failed" and "symbolic" in data["error"]


def test_traceback_only_with_vv(tmp_path: Path, capsys) -> None:
    p = tmp_path / "x.onnx"
    p.write_text("junk")
    code, _, err = _run(capsys, str(p), "-o", str(tmp_path / "o.onnx"), "-vv")
    assert code == 3
    assert "Traceback" in err


def test_inspect_and_list_passes(chain_path: Path, capsys) -> None:
    code, out, _ = _run(capsys, "inspect", str(chain_path))
    assert code == 0
    assert "params 2,968" in out and "Conv x3" in out
    assert "coupled-channel groups: 2 prunable" in out
    code, out, _ = _run(capsys, "inspect", str(chain_path), "--json")
    info = json.loads(out)
    assert info["macs"] > 0 and info["opset"] == 17
    assert info["prunable_groups"] == 2 and info["prunable_units"] == {"channel": 2}
    code, out, _ = _run(capsys, "list-passes", "--json")
    data = json.loads(out)
    names = [p["name"] for p in data["passes"]]
    assert {"prune-uniform", "prune-to-budget", "cleanup"} <= set(names)
    assert all(p["summary"] for p in data["passes"])


def test_python_m_and_console_script(chain_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "spa_compiler", "list-passes"], capture_output=True, text=True)
    assert r.returncode == 0 and "prune-to-budget" in r.stdout
    r = subprocess.run([sys.executable, "-m", "spa_compiler", str(chain_path) + ".nope"], capture_output=True,
                       text=True)
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "no such file" in r.stderr


def test_nothing_half_written_when_save_fails(tmp_path: Path, chain_path: Path, capsys, monkeypatch) -> None:
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", boom)
    code, _, err = _run(capsys, str(chain_path), "-o", str(tmp_path / "o.onnx"), "--no-measure")
    assert code != 0
    assert not (tmp_path / "o.onnx").exists()
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".spa-tmp")]
    assert os.path.exists(chain_path)


def test_closed_pipe_is_not_an_internal_error() -> None:
    """`spa-compile list-passes | head -1`: the reader leaves early; no error message, no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "spa_compiler", "list-passes"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # every write now fails with EPIPE
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=120)
    assert "internal error" not in err and "Traceback" not in err, err
    assert rc in (0, 141)
