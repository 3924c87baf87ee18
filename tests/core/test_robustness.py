"""Issue 10: any exporter, any input: no internal errors, no lost data, no changed interface.

One test (or a parametrized family) per class of defect: output paths, signals, shapes, dtypes,
non-finite values, calibration files, initializers listed as inputs, file modes, a GPU target on a
machine without a GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from spa_compiler.cli import main
from tests.helpers import conv_chain_model, make_model


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _messages(err: str) -> list[str]:
    """stderr's lines less the progress log (`spa-compile [  0.4s] stage: ...`, spa_compiler.progress)."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith("spa-compile [")]


def _one_line(err: str, *needles: str) -> str:
    lines = _messages(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("spa-compile: error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".spa-tmp-")]


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    p = tmp_path / "model.onnx"
    onnx.save(conv_chain_model(np.random.default_rng(0)), p)
    return p


def _bf16(name: str, a: np.ndarray) -> TensorProto:
    bits = (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return helper.make_tensor(name, TensorProto.BFLOAT16, a.shape, vals=bits.tobytes(), raw=True)


def _mlp(elem: int, *, cast_weights: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((16, 32)).astype(np.float32)
    w2 = rng.standard_normal((32, 8)).astype(np.float32)
    nodes = []
    if cast_weights:  # bfloat16 storage, float32 compute
        inits = [_bf16("w1b", w1), _bf16("w2b", w2)]
        nodes += [helper.make_node("Cast", ["w1b"], ["w1"], to=TensorProto.FLOAT),
                  helper.make_node("Cast", ["w2b"], ["w2"], to=TensorProto.FLOAT)]
    elif elem == TensorProto.BFLOAT16:
        inits = [_bf16("w1", w1), _bf16("w2", w2)]
    else:
        np_t = np.float16 if elem == TensorProto.FLOAT16 else np.float32
        inits = [numpy_helper.from_array(w1.astype(np_t), "w1"), numpy_helper.from_array(w2.astype(np_t), "w2")]
    nodes += [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
              helper.make_node("MatMul", ["r", "w2"], ["y"])]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", elem, [4, 16])],
                          [helper.make_tensor_value_info("y", elem, [4, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(m, full_check=True)
    return m


# ------------------------------------------------------------------------------ 1. output paths
def test_report_naming_the_input_is_refused(tmp_path: Path, chain: Path, capsys) -> None:
    before = _digest(chain)
    code, _, err = _run(capsys, str(chain), "-o", str(tmp_path / "o.onnx"), "--report", str(chain), "--no-measure")
    assert code == 2
    _one_line(err, "--report", "is the input model")
    assert _digest(chain) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_report_naming_the_output_is_refused(tmp_path: Path, chain: Path, capsys) -> None:
    out = tmp_path / "o.onnx"
    code, stdout, err = _run(capsys, str(chain), "-o", str(out), "--report", str(out), "--no-measure")
    assert code == 2 and "wrote" not in stdout
    _one_line(err, "--report and -o name the same file")
    assert not out.exists()


@pytest.mark.parametrize(
    ("flag", "where", "needle"),
    [
        ("-o", "/proc/spa-out.onnx", "cannot write in /proc"),
        ("--report", "/proc/spa-report.json", "cannot write in /proc"),
        ("-o", "{tmp}/missing/o.onnx", "does not exist"),
        ("--report", "{tmp}/missing/r.json", "does not exist"),
        ("--report", "/dev/null", "not a regular file"),
        ("--report", "{tmp}", "is a directory"),
        ("-o", "{model}/o.onnx", "is not a folder"),
    ],
)
def test_unwritable_outputs_are_usage_errors_before_any_work(
    tmp_path: Path, chain: Path, capsys, monkeypatch, flag: str, where: str, needle: str
) -> None:
    compile_mod = sys.modules["spa_compiler.compile"]  # (the package's `compile` is the API verb)

    import functools

    @functools.wraps(compile_mod.compile_model)  # (its signature: the API reads its options from it)
    def never(*a, **k):  # the check comes before any work: the model is never loaded
        raise AssertionError("compile_model ran")

    monkeypatch.setattr(compile_mod, "compile_model", never)
    path = where.format(tmp=tmp_path, model=chain)
    args = {"-o": str(tmp_path / "o.onnx"), "--report": None, flag: path}
    argv = [str(chain), "-o", args["-o"], "--no-measure"] + (["--report", args["--report"]] if args["--report"] else [])
    code, _, err = _run(capsys, *argv)
    assert code == 2
    _one_line(err, flag, needle)


def test_profile_into_a_missing_folder_is_a_usage_error(tmp_path: Path, chain: Path, capsys) -> None:
    code, _, err = _run(capsys, "profile", str(chain), "-o", str(tmp_path / "nope" / "t.json"))
    assert code == 2
    _one_line(err, "-o", "does not exist")


def test_full_disk_is_refused_before_any_work(tmp_path: Path, chain: Path, capsys, monkeypatch) -> None:
    import shutil as shutil_mod
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_mod, "disk_usage", lambda p: usage(10**9, 10**9 - 10, 10))
    code, _, err = _run(capsys, str(chain), "-o", str(tmp_path / "o.onnx"), "--no-measure")
    assert code == 2
    _one_line(err, "MB free")


def test_disk_full_during_the_save_is_one_line_and_leaves_nothing(
    tmp_path: Path, chain: Path, capsys, monkeypatch
) -> None:
    import errno

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real_save = onnx.save_model

    def full(proto, path, *a, **k):  # the disk holding the output folder is full
        if str(path).startswith(str(out_dir)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(proto, path, *a, **k)

    monkeypatch.setattr(onnx, "save_model", full)
    code, _, err = _run(capsys, str(chain), "-o", str(out_dir / "o.onnx"), "--report", str(out_dir / "r.json"),
                        "--no-measure")
    assert code == 2
    _one_line(err, "No space left on device")
    assert sorted(p.name for p in out_dir.iterdir()) == ["r.json"]  # the report says why; no model
    assert json.loads((out_dir / "r.json").read_text())["status"] == "failed"


# ------------------------------------------------------------------------------ 2. signals
def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _finish(p: subprocess.Popen[str], timeout: float = 60) -> str:
    """`p`'s stderr once it exits; a run that outlives `timeout` is killed (a failed test must
    not leave a compile running) and the test fails."""
    try:
        return p.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise


def _cli(*argv: str, **kw) -> subprocess.Popen[str]:
    """The CLI as a terminal starts it: SIGINT at its default even when these tests run as a
    background job (`cmd &` starts with SIGINT ignored, which the tool rightly keeps)."""
    return subprocess.Popen([sys.executable, "-m", "spa_compiler", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default, **kw)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_a_pass_stops_with_one_line_and_a_report(tmp_path: Path, sig: signal.Signals) -> None:
    from tests.helpers import conv_chain_model as chain_model

    src = tmp_path / "model.onnx"
    onnx.save(chain_model(np.random.default_rng(0), c=64), src)
    before = _digest(src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    report = out_dir / "r.json"
    # a calibration function that blocks: the run is surely inside the pruning pass when the signal comes
    (tmp_path / "slowcal.py").write_text(
        "import time, numpy as np\n"
        "def feeds():\n"
        "    open(%r, 'w').write('in')\n"
        "    while True:\n"
        "        time.sleep(0.05)\n"
        "        yield {'x': np.zeros((1, 3, 8, 8), np.float32)}\n" % str(tmp_path / "started")
    )
    p = _cli(str(src), "-o", str(out_dir / "o.onnx"), "--report", str(report), "--no-measure",
             "--calib", f"{tmp_path / 'slowcal.py'}:feeds")
    deadline = time.monotonic() + 120
    while not (tmp_path / "started").exists() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(sig)
    err = _finish(p)
    assert p.returncode == 128 + int(sig), err
    lines = _messages(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"spa-compile: stopped by {sig.name} during pass prune-"), lines
    data = json.loads(report.read_text())
    assert data["status"] == "interrupted" and data["stage"].startswith("pass prune-")
    assert sig.name in data["error"]
    assert sorted(q.name for q in out_dir.iterdir()) == ["r.json"]  # no model, no temporary file
    assert _digest(src) == before


def _catches_sigterm(pid: int) -> bool:
    """Whether process `pid` has a handler on SIGTERM (Linux: SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (int(signal.SIGTERM) - 1) & 1)
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status (Linux)")
@pytest.mark.parametrize("extra_delay", [0.0, 0.2])
def test_early_ctrl_c_prints_no_traceback(tmp_path: Path, chain: Path, extra_delay: float) -> None:
    """From the moment the tool's code runs (the spa_compiler package starts loading: its handler
    is on SIGTERM, which Python leaves alone), a Ctrl-C gives one line, before numpy, onnx or
    graphsurgeon load. (Earlier, the interpreter is still starting up: Python's own
    KeyboardInterrupt.)"""
    started = time.monotonic()
    p = _cli(str(chain), "-o", str(tmp_path / "o.onnx"), "--report", str(tmp_path / "r.json"))
    while p.poll() is None and not _catches_sigterm(p.pid) and time.monotonic() - started < 60:
        time.sleep(0.002)
    time.sleep(extra_delay)
    p.send_signal(signal.SIGINT)
    err = _finish(p)
    assert "Traceback" not in err, err
    if p.returncode != 0:  # (a fast machine may have finished)
        assert p.returncode == 130, err
        lines = _messages(err)
        assert len(lines) == 1 and lines[0].startswith("spa-compile: stopped by SIGINT"), err
        assert not (tmp_path / "o.onnx").exists()
        if (tmp_path / "r.json").exists():  # (not when stopped before the arguments were read)
            assert json.loads((tmp_path / "r.json").read_text())["status"] == "interrupted"
    assert _temp_files(tmp_path) == []


def test_save_interrupted_leaves_no_temporary_folder(tmp_path: Path, monkeypatch) -> None:
    from spa_compiler.ir import ModelIR
    from spa_compiler.signals import Interrupted

    model = ModelIR.from_proto(conv_chain_model(np.random.default_rng(0)))
    dest = tmp_path / "o.onnx"
    dest.write_bytes(b"previous")

    def stopped(*a, **k):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(onnx, "save_model", stopped)
    with pytest.raises(Interrupted):
        model.save(dest)
    assert dest.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.onnx"]


def test_deferred_holds_a_signal_until_the_block_ends() -> None:
    from spa_compiler import signals

    old = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        signals.install()
        order = []
        with pytest.raises(signals.Interrupted):
            with signals.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                order.append("block finished")
        assert order == ["block finished"]
    finally:
        signal.signal(signal.SIGTERM, old[0])
        signal.signal(signal.SIGINT, old[1])


# ------------------------------------------------------------------------------ 3. shapes
@pytest.mark.parametrize("verb", ["compile", "calib", "profile", "inspect", "inspect-groups"])
def test_hint_contradicting_a_fixed_dim_names_both(tmp_path: Path, chain: Path, capsys, verb: str) -> None:
    hint = ["--input-shape", "x:8x3x8x8"]
    if verb == "compile":
        argv = [str(chain), "-o", str(tmp_path / "o.onnx"), "--no-measure", *hint]
    elif verb == "calib":
        np.savez(tmp_path / "f0.npz", x=np.zeros((8, 3, 8, 8), np.float32))
        argv = [str(chain), "-o", str(tmp_path / "o.onnx"), "--no-measure", "--calib", str(tmp_path), *hint]
    elif verb == "profile":
        argv = ["profile", str(chain), "-o", str(tmp_path / "t.json"), *hint]
    elif verb == "inspect":
        argv = ["inspect", str(chain), *hint]
    else:
        argv = ["inspect", "--groups", str(chain), *hint]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    _one_line(err, "--input-shape x:8x3x8x8", "[1, 3, 8, 8]", "dimension 0 is fixed to 1")


def _zero_batch(chain: Path) -> Path:
    m = onnx.load(chain)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 0
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 0
    p = chain.with_name("zero.onnx")
    onnx.save(m, p)
    return p


def test_fixed_zero_dim_is_not_called_symbolic(chain: Path, tmp_path: Path, capsys) -> None:
    zero = _zero_batch(chain)
    code, out, err = _run(capsys, "inspect", str(zero))
    assert code == 0 and "[0, 3, 8, 8]" in out, err
    code, _, err = _run(capsys, str(zero), "-o", str(tmp_path / "o.onnx"), "--no-measure")
    assert code == 3
    line = _one_line(err, "fixed 0-sized dimension")
    assert "has symbolic dimensions" not in line


def _paddle_style(tmp_path: Path) -> Path:
    """A strided CNN as Paddle2ONNX writes it (the PP-OCR classifier's input and output): batch
    -1 (a dim_value, which shape inference carries into every tensor), height and width both
    named '?'."""
    rng = np.random.default_rng(5)
    f = np.float32
    init = {"w1": rng.standard_normal((8, 3, 3, 3)).astype(f), "w2": rng.standard_normal((16, 8, 3, 3)).astype(f),
            "w3": rng.standard_normal((4, 16, 1, 1)).astype(f)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ar"], name="r1"),
        helper.make_node("Conv", ["ar", "w2"], ["b"], name="c2", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b"], ["br"], name="r2"),
        helper.make_node("Conv", ["br", "w3"], ["c"], name="c3"),
        helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["y"], name="flat", axis=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4])
    g = helper.make_graph(nodes, "paddle", [x], [y], [numpy_helper.from_array(v, k) for k, v in init.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)], ir_version=6, producer_name="PaddlePaddle")
    p = tmp_path / "paddle.onnx"
    onnx.save(m, p)
    return p


def test_paddle_style_symbolic_spatial_dims(tmp_path: Path, capsys) -> None:
    p = _paddle_style(tmp_path)
    code, out, err = _run(capsys, "inspect", "--groups", str(p))
    assert code == 0, err
    code, out, err = _run(capsys, "inspect", str(p))
    assert code == 0, err
    code, _, err = _run(capsys, str(p), "-o", str(tmp_path / "o.onnx"), "--no-measure")
    assert code == 2
    _one_line(err, "symbolic dimensions", "--input-shape x:Nx3xNxN")
    code, out, err = _run(capsys, str(p), "-o", str(tmp_path / "o.onnx"), "--runs", "3",
                          "--input-shape", "x:1x3x32x48")
    assert code == 0, err
    onnx.checker.check_model(str(tmp_path / "o.onnx"), full_check=True)
    # the output keeps its symbolic dims
    dims = onnx.load(tmp_path / "o.onnx").graph.input[0].type.tensor_type.shape.dim
    assert dims[2].dim_param == "?" and dims[1].dim_value == 3


# ------------------------------------------------------------------------------ 4. dtypes, NaN/Inf
@pytest.mark.parametrize("verb", ["compile", "profile"])
def test_bfloat16_compute_is_refused_with_the_reason(tmp_path: Path, capsys, verb: str) -> None:
    p = tmp_path / "bf16.onnx"
    onnx.save(_mlp(TensorProto.BFLOAT16), p)
    argv = [str(p), "-o", str(tmp_path / "o.onnx"), "--no-measure"] if verb == "compile" else \
        ["profile", str(p), "-o", str(tmp_path / "t.json")]
    code, _, err = _run(capsys, *argv)
    assert code == 3
    _one_line(err, "bfloat16", "float32")


def test_bfloat16_inspect_and_bf16_storage_compile(tmp_path: Path, capsys) -> None:
    p = tmp_path / "bf16.onnx"
    onnx.save(_mlp(TensorProto.BFLOAT16), p)
    code, out, err = _run(capsys, "inspect", str(p))
    assert code == 0 and "params 768" in out and "[W]" not in out, (out, err)
    q = tmp_path / "bf16cast.onnx"
    onnx.save(_mlp(TensorProto.FLOAT, cast_weights=True), q)
    code, _, err = _run(capsys, str(q), "-o", str(tmp_path / "o.onnx"), "--runs", "3")
    assert code == 0, err
    onnx.checker.check_model(str(tmp_path / "o.onnx"), full_check=True)


def test_float16_model_compiles(tmp_path: Path, capsys) -> None:
    p = tmp_path / "fp16.onnx"
    onnx.save(_mlp(TensorProto.FLOAT16), p)
    code, _, err = _run(capsys, str(p), "-o", str(tmp_path / "o.onnx"), "--runs", "3")
    assert code == 0, err
    out = onnx.load(tmp_path / "o.onnx")
    assert out.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weight_names_the_tensor(tmp_path: Path, capsys, bad: float) -> None:
    m = conv_chain_model(np.random.default_rng(0))
    for t in m.graph.initializer:
        if t.name == "w2":
            a = numpy_helper.to_array(t).copy()
            a[1, 0, 0, 0] = bad
            t.CopyFrom(numpy_helper.from_array(a, "w2"))
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    code, _, err = _run(capsys, str(p), "-o", str(tmp_path / "o.onnx"), "--no-measure")
    assert code == 3
    line = _one_line(err, "'w2'", "NaN" if np.isnan(bad) else "Inf")
    assert "report it" not in line


def test_inf_in_a_mask_constant_is_fine(tmp_path: Path, capsys) -> None:
    """-inf outside weights is legitimate (attention masks): not refused."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    mask = np.where(np.triu(np.ones((4, 8)), 1) > 0, -np.inf, 0).astype(np.float32)
    m = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "mask"], ["s"]),
         helper.make_node("Softmax", ["s"], ["y"], axis=-1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        {"w": w, "mask": mask},
    )
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    code, _, err = _run(capsys, str(p), "-o", str(tmp_path / "o.onnx"), "--no-measure")
    assert code == 0, err


# ------------------------------------------------------------------------------ calibration files
def test_calibration_nan_names_the_file(tmp_path: Path, chain: Path, capsys) -> None:
    cal = tmp_path / "cal"
    cal.mkdir()
    x = np.zeros((1, 3, 8, 8), np.float32)
    x[0, 0, 0, 0] = np.nan
    np.savez(cal / "f0.npz", x=x)
    code, _, err = _run(capsys, str(chain), "-o", str(tmp_path / "o.onnx"), "--no-measure", "--calib", str(cal))
    assert code == 2
    _one_line(err, "f0.npz", "NaN/Inf")


def test_truncated_npz_is_a_usage_error(tmp_path: Path, chain: Path, capsys) -> None:
    cal = tmp_path / "cal"
    cal.mkdir()
    np.savez(cal / "f0.npz", x=np.zeros((1, 3, 8, 8), np.float32))
    data = (cal / "f0.npz").read_bytes()
    (cal / "f0.npz").write_bytes(data[: len(data) // 2])
    code, _, err = _run(capsys, str(chain), "-o", str(tmp_path / "o.onnx"), "--no-measure", "--calib", str(cal))
    assert code == 2
    _one_line(err, "f0.npz", "truncated")


def test_npz_with_the_wrong_key_lists_its_keys(tmp_path: Path, chain: Path, capsys) -> None:
    cal = tmp_path / "cal"
    cal.mkdir()
    np.savez(cal / "f0.npz", images=np.zeros((1, 3, 8, 8), np.float32))
    code, _, err = _run(capsys, str(chain), "-o", str(tmp_path / "o.onnx"), "--no-measure", "--calib", str(cal))
    assert code == 2
    _one_line(err, "['images']", "['x']")


@pytest.mark.parametrize("where", ["call", "iteration", "import"])
def test_calibration_function_calling_sys_exit(tmp_path: Path, chain: Path, capsys, where: str) -> None:
    body = {
        "call": "import sys\ndef feeds():\n    sys.exit(3)\n",
        "iteration": "import sys\ndef feeds():\n    yield from ()\n    sys.exit('bye')\n",
        "import": "import sys\nsys.exit(0)\ndef feeds():\n    return []\n",
    }[where]
    if where == "iteration":
        body = "import sys\ndef feeds():\n    if False:\n        yield {}\n    sys.exit('bye')\n"
    (tmp_path / "cal.py").write_text(body)
    code, _, err = _run(capsys, str(chain), "-o", str(tmp_path / "o.onnx"), "--no-measure",
                        "--calib", f"{tmp_path / 'cal.py'}:feeds")
    assert code == 2
    _one_line(err, "sys.exit")


# ------------------------------------------------------------------------------ 5. interface
def test_initializer_listed_as_input_keeps_the_interface(tmp_path: Path, capsys) -> None:
    m = conv_chain_model(np.random.default_rng(0))
    w2 = next(t for t in m.graph.initializer if t.name == "w2")
    m.graph.input.append(helper.make_tensor_value_info("w2", TensorProto.FLOAT, list(w2.dims)))
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    out = tmp_path / "o.onnx"
    code, _, err = _run(capsys, str(p), "-o", str(out), "--runs", "3", "--report", str(tmp_path / "r.json"))
    assert code == 0, err
    o = onnx.load(out)

    def io(model: onnx.ModelProto) -> list:
        return [(v.name, v.type.tensor_type.elem_type) for v in model.graph.input] + \
               [(v.name, v.type.tensor_type.elem_type) for v in model.graph.output]

    assert io(o) == io(m)
    kept = next(t for t in o.graph.initializer if t.name == "w2")  # its default value, untouched
    np.testing.assert_array_equal(numpy_helper.to_array(kept), numpy_helper.to_array(w2))
    # and the model still runs with the weight overridden by the caller
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.ones((1, 3, 8, 8), np.float32)
    sess.run(None, {"x": x, "w2": numpy_helper.to_array(w2)})


def test_interface_check_refuses_a_changed_interface() -> None:
    from spa_compiler.checks import check_interface
    from spa_compiler.errors import InterfaceError

    a = [("input", "x", "FLOAT"), ("output", "y", "FLOAT")]
    check_interface(a, list(a))
    with pytest.raises(InterfaceError, match="'x'.*became"):
        check_interface(a, [("input", "x", "FLOAT16"), ("output", "y", "FLOAT")])
    with pytest.raises(InterfaceError):
        check_interface(a, a[:1])


# ------------------------------------------------------------------------------ 6. file modes
def test_report_and_table_get_the_models_mode(tmp_path: Path, chain: Path, capsys) -> None:
    old = os.umask(0o022)
    try:
        code, _, err = _run(capsys, str(chain), "-o", str(tmp_path / "o.onnx"), "--report", str(tmp_path / "r.json"),
                            "--runs", "3")
        assert code == 0, err
        code, _, err = _run(capsys, "profile", str(chain), "-o", str(tmp_path / "t.json"), "--runs", "2")
        assert code == 0, err
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir() if p.name != "model.onnx"}
    assert modes == {"o.onnx": 0o644, "r.json": 0o644, "t.json": 0o644}


# ------------------------------------------------------------------------------ 7. GPU target, no GPU
def test_gpu_target_without_a_gpu_uses_labelled_analytic_estimates(tmp_path: Path, capsys) -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider: the measured path applies")
    pytest.importorskip("torch")
    from spa_compiler import models_zoo

    src = models_zoo.build("tiny_bert", "torchscript")
    hints = [a for k, v in models_zoo.default_shapes("tiny_bert").items()
             for a in ("--input-shape", f"{k}:{'x'.join(map(str, v))}")]
    report = tmp_path / "r.json"
    code, out, err = _run(capsys, str(src), "-o", str(tmp_path / "o.onnx"), "--target", "ort-cuda",
                          "--precision", "fp16", "--latency-budget", "0.9x", "--report", str(report), *hints)
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["status"] == "ok" and data["target"] == "ort-cuda"
    assert data["before"]["latency_kind"] == "analytic" and data["after"]["paired"]["kind"] == "analytic"
    assert any("ANALYTIC" in n for n in data["notes"])
    assert "ANALYTIC" in out
    onnx.checker.check_model(str(tmp_path / "o.onnx"), full_check=True)
