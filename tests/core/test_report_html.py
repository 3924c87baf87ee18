"""The HTML report: every section renders from the JSON report, the page is self-contained, its
SVG is well-formed, user text is escaped; and, in headless Chromium, the page shows its numbers."""

from __future__ import annotations

import copy
import json
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from spa_compiler.cli import main
from spa_compiler.reporting import comparison, render, render_comparison, render_report
from spa_compiler.reporting.svg import nice_ticks, tick_label
from tests.helpers import conv_chain_model


def full_report() -> dict[str, Any]:
    """A report with every kind of record the renderer knows, and one it does not."""
    rounds = [
        {
            "round": 1,
            "internal_budget_ms": 5.2,
            "predicted_ms": 5.0,
            "measured_ms": 6.1,
            "mean_error": 0.08,
            "status": "ok",
        },
        {
            "round": 2,
            "internal_budget_ms": 4.3,
            "predicted_ms": 4.2,
            "measured_ms": 5.3,
            "mean_error": 0.12,
            "status": "ok",
        },
        {
            "round": 3,
            "uniform_share": 0.4,
            "predicted_ms": 4.0,
            "measured_ms": 5.05,
            "mean_error": 0.15,
            "status": "joint-fallback",
        },
    ]
    return {
        "tool_version": "0.1.0",
        "created": "2026-12-01T16:00:00+00:00",
        "input": {"path": "/data/model.onnx", "sha256": "ab" * 32, "opset": 17, "ir_version": 8},
        "output": {
            "path": "/data/small.onnx",
            "ir_version": 8,
            "opset": 17,
            "deploy": {"checked": "onnxruntime session created and run on the output"},
        },
        "pipeline": "cleanup,prune-to-budget,sparsify-nm",
        "target": "ort-cpu",
        "budget": {
            "requested": "0.6x of dense",
            "ms": 5.4321,
            "measured_fraction": 0.5803,
            "measured_ms": 5.2222,
            "met": True,
            "relative_to": "model as given",
        },
        "before": {
            "params": 1000,
            "macs": 500000,
            "nodes": 30,
            "latency_ms": 9.1,
            "latency_kind": "measured",
            "latency_runs": 30,
            "latency_provider": "CPUExecutionProvider",
            "latency_device": "x86_64 CPU",
            "runtime": "onnxruntime 1.32.0",
            "precision": "fp32",
        },
        "after": {
            "params": 600,
            "macs": 280000,
            "nodes": 30,
            "latency_ms": 5.3,
            "latency_kind": "measured",
            "paired": {
                "dense_ms": 8.9987,
                "lowered_dense_ms": 7.7654,
                "compiled_ms": 5.2222,
                "ratio": 0.5803,
                "ratio_to_lowered": 0.6725,
                "runs": 31,
                "kind": "measured",
            },
        },
        "lowering": {
            "mode": "auto",
            "describe": "ort-fusions",
            "dense_ms": 7.7654,
            "tried": [
                {"family": "attention", "applicable": True, "kept": True, "gain": 0.13},
                {"family": "gelu", "applicable": False},
            ],
            "notes": ["fp16 not checked on CPU"],
        },
        "status": "ok",
        "error": None,
        "notes": ["a note from the compile <b>bold?</b>"],
        "passes": [
            {
                "name": "cleanup",
                "options": {},
                "modified": False,
                "seconds": 0.01,
                "stats": {"nodes_removed": 0},
                "skipped": {},
                "details": [],
                "error": None,
            },
            {
                "name": "prune-to-budget",
                "options": {"criterion": "obspa"},
                "modified": True,
                "seconds": 3.5,
                "stats": {
                    "mode": "latency-search",
                    "criterion": "obspa",
                    "budget_ms": 5.4321,
                    "aimed_ms": 5.35,
                    "dense_ms": 9.1,
                    "table_dense_ms": 9.1,
                    "mean_error": 0.1234,
                    "search_rounds": 3,
                },
                "skipped": {"frozen:graph-output": 2, "frozen:graph-input": 1},
                "details": [
                    {
                        "group": "/layer1/conv1:channel",
                        "unit": "channel",
                        "units": 64,
                        "kept": 40,
                        "unit_size": 1,
                        "error": 0.2468,
                        "criterion": "obspa",
                        "latency_ms": 1.25,
                        "latency_dense_ms": 2.0,
                        "moments": "batchnorm",
                    },
                    {
                        "group": "/layer2/conv1:channel",
                        "unit": "channel",
                        "units": 128,
                        "kept": 128,
                        "unit_size": 1,
                        "error": 0.0,
                        "criterion": "obspa",
                        "latency_ms": 3.0,
                    },
                    {
                        "search_rounds": rounds,
                        "search_units": "latency-table ms",
                        "latency_table": {
                            "device": "x86_64 CPU",
                            "runtime": "onnxruntime",
                            "runtime_version": "1.32.0",
                            "precision": "fp32",
                            "date": "2026-12-01",
                            "kind": "measured",
                            "dense_ms": 9.1,
                            "methods": ["pruning"],
                        },
                    },
                ],
                "error": None,
                "notes": [],
            },
            {
                "name": "sparsify-nm",
                "options": {},
                "modified": True,
                "seconds": 1.0,
                "stats": {"mean_error_applied": 0.0321},
                "skipped": {"axis-not-divisible-by-4": 1},
                "details": [
                    {
                        "site": "fc1",
                        "node": "/fc1/MatMul",
                        "op": "MatMul",
                        "shape": [256, 512],
                        "applied": True,
                        "variant": "2:4",
                        "why": "measured faster",
                        "error": {"2:4": 0.0321, "1:4": 0.2},
                        "measured_gain_ms": {"2:4": 0.456},
                        "form": "dense pattern",
                    },
                    {
                        "site": "fc2",
                        "node": "/fc2/MatMul",
                        "op": "MatMul",
                        "shape": [512, 256],
                        "applied": False,
                        "variant": "dense",
                        "why": "not measured faster on the target",
                        "error": {"2:4": 0.05},
                    },
                ],
                "error": None,
            },
            {
                "name": "monarch-like",
                "options": {},
                "modified": True,
                "seconds": 0.5,
                "stats": {},
                "skipped": {},
                "details": [{"layer": "qkv", "blocks": 4, "rank_kept": 0.5}],
                "error": None,
            },
        ],
    }


def _text(page: str) -> str:
    """The page's visible text (tags dropped, whitespace collapsed), as a reader sees it."""
    page = re.sub(r"<style>.*?</style>", " ", page, flags=re.S)
    page = re.sub(r"<title>.*?</title>", " ", page, flags=re.S)
    page = re.sub(r"<wbr>", "", page)  # line-break opportunities inside names
    text = re.sub(r"<[^>]+>", " ", page)
    import html

    return " ".join(html.unescape(text).split())


def test_every_section_renders_its_numbers() -> None:
    page = render_report(full_report())
    text = _text(page)
    # the verdict with the budget
    assert "Budget 0.6x of dense = 5.432 ms: met" in text
    # what happened, in words
    for needle in ("prune-to-budget pruned 1 of 2 prunable groups (24 units removed)",
                   "sparsify-nm changed 1 of 2 sites (2:4)", "Parameters are 60% of the original, MACs 56%",
                   "The budget of 5.432 ms (0.6x of dense) is met."):
        assert needle in text, needle
    # the three latencies, paired
    for needle in (
        "latency as given",
        "8.999 ms",
        "lowered dense",
        "7.765 ms",
        "0.863x of as given",
        "compiled",
        "5.222 ms",
        "0.580x of as given",
        "All three were timed in one alternating run",
    ):
        assert needle in text, needle
    # what each pass did: pruning groups, N:M sites, an unknown record kind as a table
    for needle in (
        "pruned to 40 of 64 channels",
        "kept dense (128 channels)",
        "0.247",
        "0.7500 ms (8.2%)",
        "contribution 1.250 ms of 2.000 ms dense",
        "contribution 3.000 ms",
        "2:4 (dense pattern)",
        "kept dense",
        "0.4560 ms (5.1%)",
        "not measured faster",
        "rank_kept",
        "qkv",
    ):
        assert needle in text, needle
    # search rounds: the chart and the table
    assert "predicted (table)" in page and "measured (whole model)" in page
    assert "+22.0%" in text and "joint-fallback" in text
    # provenance, lowering, notes, skipped, the run
    for needle in (
        "Latency table provenance",
        "onnxruntime",
        "1.32.0",
        "ort-fusions",
        "attention",
        "not applicable",
        "Notes and warnings",
        "a note from the compile <b>bold?</b>",
        "frozen:graph-output",
        "axis-not-divisible-by-4",
        "ababab",
        "Reading this report",
    ):
        assert needle in text, needle


def test_page_is_self_contained_and_svg_well_formed() -> None:
    for page in (
        render_report(full_report()),
        render_comparison(comparison([full_report(), full_report()])),
    ):
        lowered = page.lower()
        for banned in ("<script", "<link", "src=", "url(", "@import", "<iframe", "<img"):
            assert banned not in lowered, banned
        assert set(re.findall(r"https?://[^\s\"'<>]+", page)) <= {"http://www.w3.org/2000/svg"}
        svgs = re.findall(r"<svg\b.*?</svg>", page, flags=re.S)
        assert len(svgs) >= 2
        for svg in svgs:
            ET.fromstring(svg)  # raises on malformed XML


def test_user_text_is_escaped() -> None:
    r = full_report()
    r["passes"][1]["details"][0]["group"] = "<script>alert(1)</script>"
    r["input"]["path"] = "/x/<img src=x>.onnx"
    page = render_report(r)
    assert "<script>" not in page and "<img src" not in page
    assert "&lt;script&gt;alert(1)&lt;/<wbr>script&gt;" in page
    assert "<script>alert(1)</script>" in _text(page)  # shown as text


def test_minimal_and_failed_reports_render() -> None:
    page = render_report(
        {"status": "failed", "error": "cannot read the latency budget 'fast'", "passes": []}
    )
    assert "FAILED" in page and "cannot read the latency budget" in page
    # no lowering, no pairing: two latencies, timed separately
    r = full_report()
    del r["after"]["paired"], r["lowering"]
    page = render_report(r)
    text = _text(page)
    assert (
        '<div class="k">lowered dense' not in page
        and "timed separately" in text
        and "5.300 ms" in text
    )
    # no budget
    r = full_report()
    r["budget"] = {}
    assert "No latency budget" in _text(render_report(r))


def test_comparison_plots_latency_against_quality() -> None:
    runs = []
    for req, ms, err in (
        ("0.8x of dense", 7.2, 0.05),
        ("0.6x of dense", 5.2, 0.12),
        ("0.4x of dense", 3.9, 0.31),
    ):
        r = copy.deepcopy(full_report())
        r["budget"]["requested"] = req
        r["after"]["paired"]["compiled_ms"] = ms
        r["passes"][1]["stats"]["mean_error"] = err
        del r["passes"][2]  # one lossy pass: its mean error is the run's
        r["fidelity"] = {"top1_agreement": 1.0 - err}
        r["output"]["path"] = f"/data/small.{req.split()[0]}.onnx"
        runs.append(r)
    data = comparison(runs)
    assert data["schema"] == "spa-compare/1" and [x["budget"] for x in data["runs"]] == [
        r["budget"]["requested"] for r in runs
    ]
    page = render(json.loads(json.dumps(data)))
    text = _text(page)
    assert "3 budgets compared" in text
    assert "measured latency against mean error" in page
    assert "measured latency against fidelity top1_agreement" in page
    for needle in ("0.8x of dense", "7.200 ms", "0.0500", "0.310", "small.0.4x.onnx"):
        assert needle in text, needle
    assert page.count("<details class='run'") == 3


def test_ticks() -> None:
    assert nice_ticks(0, 0.93) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    ticks = nice_ticks(0, 0.24)
    assert [tick_label(t, ticks) for t in ticks] == ["0.00", "0.05", "0.10", "0.15", "0.20", "0.25"]


def _report_verb(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["report", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_report_verb_renders_a_saved_report(tmp_path: Path, capsys) -> None:
    src = tmp_path / "report.json"
    src.write_text(json.dumps(full_report()))
    code, out, _ = _report_verb(capsys, str(src))
    assert code == 0 and "report.html" in out
    assert "pruned to 40 of 64 channels" in (tmp_path / "report.html").read_text()
    code, _, err = _report_verb(capsys, str(tmp_path / "missing.json"))
    assert (
        code == 2
        and err.startswith("spa-compile: error: the report")
        and len(err.splitlines()) == 1
    )
    (tmp_path / "junk.json").write_text("{not json")
    code, _, err = _report_verb(capsys, str(tmp_path / "junk.json"))
    assert code == 2 and "cannot read the report" in err
    (tmp_path / "other.json").write_text("[1, 2]")
    code, _, err = _report_verb(capsys, str(tmp_path / "other.json"))
    assert code == 2 and "is not a spa-compiler report" in err
    code, _, err = _report_verb(capsys, str(src), "-o", str(tmp_path / "page.txt"))
    assert code == 2 and "should end in .html" in err


# ------------------------------------------------------------------------------- in a browser
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def png_pixels(path: Path) -> np.ndarray:
    """Decode an 8-bit, non-interlaced RGB/RGBA PNG (what Chromium writes) to an array."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    channels = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * channels)
    out = np.zeros((height, width * channels), dtype=np.int32)
    prev = np.zeros(width * channels, dtype=np.int32)
    for y in range(height):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        cur = np.zeros_like(line)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) % 256
        else:  # sub, average, paeth: left-dependent, byte by byte
            for i in range(len(line)):
                a = cur[i - channels] if i >= channels else 0
                b, c = prev[i], prev[i - channels] if i >= channels else 0
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                cur[i] = (line[i] + pred) % 256
        out[y], prev = cur, cur
    return out.reshape(height, width, channels)


@pytest.mark.skipif(
    _chromium() is None, reason="needs headless Chromium (Debian: apt-get install chromium)"
)
def test_report_in_headless_chromium(tmp_path: Path, rng: np.random.Generator) -> None:
    """A real compile's report, opened in a browser: the screenshot is not blank and the page text
    has the verdict and the numbers of the JSON report."""
    import spa_compiler

    model = tmp_path / "model.onnx"
    onnx.save(conv_chain_model(rng), model)
    result = spa_compiler.compile(
        model,
        output=tmp_path / "small.onnx",
        budget="0.7x",
        runs=5,
        report=tmp_path / "report.json",
        report_html=tmp_path / "report.html",
    )
    data = json.loads((tmp_path / "report.json").read_text())
    chromium = _chromium()
    assert chromium is not None
    base = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    url = (tmp_path / "report.html").as_uri()
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*base, "--window-size=1200,1600", f"--screenshot={shot}", url],
        check=True,
        timeout=120,
        capture_output=True,
    )
    pixels = png_pixels(shot)
    assert pixels.shape[0] == 1600 and pixels.shape[1] == 1200
    rgb = pixels[..., :3]
    assert rgb.std() > 10, "the screenshot is blank"
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20, "too few colours: nothing rendered"
    assert (rgb < 100).all(axis=-1).mean() > 0.005, "no dark text on the page"
    dom = subprocess.run(
        [*base, "--dump-dom", url], check=True, timeout=120, capture_output=True, text=True
    ).stdout
    text = _text(dom)
    paired = data["after"]["paired"]
    assert f"{result.verdict}" in text
    from spa_compiler.reporting.svg import fmt_num

    def page_ms(x: float) -> str:  # the page's own number format (4 significant digits)
        return f"{fmt_num(x, 4)} ms"

    assert f"Budget {data['budget']['requested']} = {page_ms(data['budget']['ms'])}" in text
    for ms in (paired["dense_ms"], paired["compiled_ms"]):
        assert page_ms(ms) in text, ms
    assert f"{paired['compiled_ms'] / paired['dense_ms']:.3f}x of as given" in text
    search = data["passes"][1]
    assert search["name"] == "prune-to-budget"
    for d in search["details"]:
        if "group" in d:
            assert d["group"] in text
    for reason in search["skipped"]:
        assert reason in text
