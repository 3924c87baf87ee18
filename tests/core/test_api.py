"""The Python API mirrors the CLI: the same files, the same errors with the same messages; several
budgets write one model per budget and one comparison; the README's Python example runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import spa_compiler
from spa_compiler.cli import main
from spa_compiler.errors import SpaError
from tests.helpers import conv_chain_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def chain_path(tmp_path: Path, rng: np.random.Generator) -> Path:
    p = tmp_path / "model.onnx"
    onnx.save(conv_chain_model(rng), p)
    return p


def test_public_names() -> None:
    for name in ("compile", "inspect", "profile", "Result", "Run", "Inspection", "compile_model"):
        assert name in spa_compiler.__all__ and hasattr(spa_compiler, name), name
    assert callable(spa_compiler.compile) and callable(spa_compiler.inspect)
    # the modules of the same names stay importable
    from spa_compiler.compile import compile_model
    from spa_compiler.inspect import inspect_model

    assert compile_model is spa_compiler.compile_model and callable(inspect_model)
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        spa_compiler.compile("model.onnx", no_such_option=1)


def test_compile_one_budget(tmp_path: Path, chain_path: Path) -> None:
    out = tmp_path / "small.onnx"
    result = spa_compiler.compile(
        chain_path,
        output=out,
        budget="0.7x",
        runs=5,
        report=tmp_path / "r.json",
        report_html=tmp_path / "r.html",
    )
    assert result.output == out and out.is_file()
    assert result.written == (out, tmp_path / "r.json", tmp_path / "r.html")
    assert result.verdict in ("met", "NOT met") and result.met is (result.verdict == "met")
    assert result.report.status == "ok" and result.report.budget["requested"] == "0.7x of dense"
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["after"]["paired"]["compiled_ms"] == result.report.after["paired"]["compiled_ms"]
    assert "spa-compiler report" in (tmp_path / "r.html").read_text()
    assert len(result.runs) == 1 and result.runs[0].budget == "0.7x"
    assert "wrote" in result.summary()


def test_several_budgets_write_one_model_each_and_a_comparison(
    tmp_path: Path, chain_path: Path, capsys
) -> None:
    out = tmp_path / "small.onnx"
    code = main(
        [
            str(chain_path),
            "-o",
            str(out),
            "--latency-budget",
            "0.8x,0.6x",
            "--runs",
            "5",
            "--report",
            str(tmp_path / "cmp.json"),
            "--report-html",
            str(tmp_path / "cmp.html"),
        ]
    )
    stdout = capsys.readouterr().out
    assert code == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"model.onnx", "small.0.8x.onnx", "small.0.6x.onnx", "cmp.json", "cmp.html"}, (
        names
    )
    for tag in ("0.8x", "0.6x"):
        onnx.checker.check_model(str(tmp_path / f"small.{tag}.onnx"), full_check=True)
        assert f"small.{tag}.onnx" in stdout
    data = json.loads((tmp_path / "cmp.json").read_text())
    assert data["schema"] == "spa-compare/1"
    assert [r["budget"] for r in data["runs"]] == ["0.8x of dense", "0.6x of dense"]
    assert [Path(r["output"]).name for r in data["runs"]] == ["small.0.8x.onnx", "small.0.6x.onnx"]
    assert all(r["report"]["status"] == "ok" for r in data["runs"])
    page = (tmp_path / "cmp.html").read_text()
    assert "2 budgets compared" in page and "measured latency against mean error" in page
    assert re.search(r"budget\s+compiled ms\s+of dense\s+verdict", stdout)
    # the API gives the same shape of result
    res = spa_compiler.compile(
        chain_path, output=tmp_path / "api.onnx", budget=["0.8x", 0.5], runs=5
    )
    assert [r.budget for r in res.runs] == ["0.8x", "0.5ms"]
    assert [r.output.name for r in res.runs] == ["api.0.8x.onnx", "api.0.5ms.onnx"]
    with pytest.raises(AttributeError, match="one per budget"):
        res.output  # noqa: B018


# argv (after the model) and the API's keyword arguments that must fail alike
BAD = [
    (["--latency-budget", "fast"], {"budget": "fast"}),
    (["--latency-budget", "1.5x"], {"budget": "1.5x"}),
    (["--latency-budget", "0.8x,0.8x"], {"budget": "0.8x,0.8x"}),
    (["--latency-budget", "0.8x,"], {"budget": "0.8x,"}),
    (["--input-shape", "x:abc"], {"input_shapes": ["x:abc"]}),
    (["--input-shape", "nope:1x2"], {"input_shapes": {"nope": (1, 2)}}),
    (["-o", "OUT/out.txt"], {"output": "OUT/out.txt"}),
    (["--target", "tpu"], {"target": "tpu"}),
    (["-p", "no-such-pass"], {"passes": "no-such-pass"}),
    (["--report-html", "OUT/r.json"], {"report_html": "OUT/r.json"}),
    (["--latency-table", "OUT/missing.json"], {"latency_table": "OUT/missing.json"}),
]


@pytest.mark.parametrize(("argv", "kwargs"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_errors_are_the_cli_errors(
    tmp_path: Path, chain_path: Path, capsys, argv: list[str], kwargs: dict
) -> None:
    argv = [a.replace("OUT", str(tmp_path)) for a in argv]
    kwargs = {
        k: v.replace("OUT", str(tmp_path)) if isinstance(v, str) else v for k, v in kwargs.items()
    }
    code = main([str(chain_path), "-o", str(tmp_path / "o.onnx"), "--no-measure", *argv])
    err = capsys.readouterr().err
    with pytest.raises(SpaError) as info:
        spa_compiler.compile(
            chain_path, **{"output": tmp_path / "o.onnx", "measure": False, **kwargs}
        )
    assert err.strip() == f"spa-compile: error: {info.value.one_line()}"
    assert code == info.value.exit_code != 0
    assert not (tmp_path / "o.onnx").exists()


def test_missing_model_same_error(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "none.onnx"
    code = main([str(missing)])
    err = capsys.readouterr().err
    with pytest.raises(SpaError) as info:
        spa_compiler.compile(missing)
    assert (
        err.strip() == f"spa-compile: error: {info.value.one_line()}"
        and code == info.value.exit_code == 3
    )


def test_report_written_on_failure(tmp_path: Path, chain_path: Path) -> None:
    with pytest.raises(SpaError):
        spa_compiler.compile(
            chain_path,
            output=tmp_path / "o.onnx",
            budget="0.8x,nope",
            report=tmp_path / "r.json",
            report_html=tmp_path / "r.html",
        )
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["status"] == "failed" and "cannot read the latency budget 'nope'" in data["error"]
    assert "FAILED" in (tmp_path / "r.html").read_text()


def test_inspect_mirrors_the_cli(chain_path: Path, capsys) -> None:
    info = spa_compiler.inspect(chain_path)
    assert main(["inspect", str(chain_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(info.data))
    assert main(["inspect", str(chain_path)]) == 0
    assert capsys.readouterr().out.strip() == info.text.strip() == str(info).strip()
    groups = spa_compiler.inspect(chain_path, groups=True)
    assert main(["inspect", "--groups", "--json", str(chain_path)]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(groups.data))


def test_profile_writes_a_table(tmp_path: Path, chain_path: Path) -> None:
    from spa_compiler.latency.table import LatencyTable

    table = spa_compiler.profile(chain_path, tmp_path / "t.json", runs=3, levels=3)
    again = LatencyTable.load(tmp_path / "t.json")
    assert again.groups.keys() == table.groups.keys() and table.groups
    with pytest.raises(SpaError, match=r"should end in \.json"):
        spa_compiler.profile(chain_path, tmp_path / "t.txt")


def _readme_python() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's Python API section has no python block"
    return blocks[0]


def test_readme_python_example_runs(tmp_path: Path, rng: np.random.Generator) -> None:
    """The README's example, as written, in a fresh interpreter, beside a model.onnx."""
    onnx.save(conv_chain_model(rng), tmp_path / "model.onnx")
    (tmp_path / "example.py").write_text(_readme_python())
    proc = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in (
        "small.onnx",
        "report.json",
        "report.html",
        "small.0.8x.onnx",
        "small.0.6x.onnx",
        "sweep.html",
    ):
        assert (tmp_path / name).is_file(), name
    assert "cannot read the latency budget" in proc.stdout
