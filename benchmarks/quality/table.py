"""The criteria table (issue 5): quality of each criterion at the same measured latency.

For one real model and each latency budget (fractions of the dense model's measured latency on ONNX
Runtime CPU, 1 thread), four compiles, each meeting the budget as measured:

    uniform-magnitude  the same share of every group removed (searched to the budget), group L2
    uniform-obs        the same shares, ZipLM structured OBS + least-squares re-fit, calibrated
    obspa              per-group levels from the latency search, OBSPA (no data at all)
    ziplm-obs          per-group levels from the latency search, structured OBS, calibrated

then the quality of each output (`benchmarks.quality.run`). One latency table is profiled per model
and shared by every compile (`spa-compile profile`); every compile still times its candidates
against the dense model (paired) and corrects the table's prediction. The error bound is lifted
(`--max-error 100`) so every row reaches the same latency: the table compares quality at equal
latency, not the compiler's own refusal to gut a model.

    python -m benchmarks.quality.table --model minilm [--budgets 0.8,0.6] [--methods ...]
    python -m benchmarks.quality.table --model minilm --workdir W --remeasure   # re-time all rows at once
    python -m benchmarks.quality.table --markdown      # the tables from the committed JSON

Results: benchmarks/quality/results/table-<model>.json, updated after every row; rows already
there are skipped (re-run with --force to redo), so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "quality" / "results"

MODELS: dict[str, dict[str, Any]] = {
    "smollm2": {"real": "smollm2-135m", "exporter": "dynamo", "shapes": ["input_ids:1x128"], "runs": 9,
                "calib": "benchmarks/quality/evaluate.py:smollm2_calibration"},
    "minilm": {"real": "minilm-l6", "exporter": "torchscript",
               "shapes": ["input_ids:4x128", "attention_mask:4x128", "token_type_ids:4x128"], "runs": 15,
               "calib": "benchmarks/quality/evaluate.py:minilm_calibration"},
    "efficientnet": {"real": "efficientnet-lite0", "exporter": "torchscript", "shapes": ["input:4x3x224x224"],
                     "runs": 15, "calib": "benchmarks/quality/evaluate.py:efficientnet_calibration"},
}
METHODS = {
    "uniform-magnitude": ("magnitude", True),
    "uniform-obs": ("obs", True),
    "obspa": ("obspa", False),
    "ziplm-obs": ("obs", False),
}
METRIC = {"smollm2": "perplexity", "minilm": "probe_accuracy", "efficientnet": "probe_accuracy"}


def _timed(cmd: list[str], log: pathlib.Path) -> dict[str, Any]:
    """Run `cmd` under /usr/bin/time -v; wall seconds and peak RSS; raise with the log's tail."""
    t = time.time()
    with log.open("w") as fh:
        rc = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{shlex.join(cmd)} failed (exit {rc}):\n" + "\n".join(tail))
    return {**_from_log(log), "wall_s": round(time.time() - t, 1)}


def _from_log(log: pathlib.Path) -> dict[str, Any]:
    """Wall seconds and peak RSS from a finished /usr/bin/time -v log (None when unknown)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    user = re.search(r"User time \(seconds\): ([\d.]+)", text)
    sys_ = re.search(r"System time \(seconds\): ([\d.]+)", text)
    secs = None
    if wall:
        secs = 0.0
        for part in wall.group(1).split(":"):
            secs = secs * 60 + float(part)
    cpu = round(float(user.group(1)) + float(sys_.group(1)), 1) if user and sys_ else None
    return {"wall_s": secs, "cpu_s": cpu, "peak_rss_gb": round(int(rss.group(1)) / 1e6, 2) if rss else None}


def _spa() -> list[str]:
    return [sys.executable, "-m", "spa_compiler"]


def run_model(name: str, budgets: list[str], methods: list[str], force: bool, work: pathlib.Path) -> pathlib.Path:
    from spa_compiler.models_zoo import real

    cfg = MODELS[name]
    out = RESULTS / f"table-{name}.json"
    data: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    data.setdefault("model", cfg["real"])
    data.setdefault("rows", {})
    dense = real.export_real(cfg["real"], cfg["exporter"])
    shapes = [a for s in cfg["shapes"] for a in ("--input-shape", s)]
    table = work / f"{name}-table.json"
    if "table" not in data or not table.exists():
        if table.exists():  # profiled by an interrupted run
            prof = data.get("table") or _from_log(work / f"{name}-profile.log")
        else:
            prof = _timed([*_spa(), "profile", str(dense), "-o", str(table), "--target", "ort-cpu", "--threads",
                           "1", "--runs", str(cfg["runs"]), *shapes], work / f"{name}-profile.log")
        t = json.loads(table.read_text())
        data["table"] = {**prof, "provenance": t.get("provenance"), "dense_ms": t.get("dense_ms"),
                         "groups": len(t.get("groups", {}))}
    for b in budgets:
        for m in methods:
            key = f"{m}@{b}x"
            if key in data["rows"] and not force:
                continue
            criterion, uniform = METHODS[m]
            opts = f"criterion={criterion}"
            onnx = work / f"{name}-{m}-{b}.onnx"
            rep = work / f"{name}-{m}-{b}.report.json"
            cmd = [*_spa(), str(dense), "-o", str(onnx), "-p", f"cleanup,{'prune-uniform' if uniform else 'prune-to-budget'}{{{opts}}},cleanup",
                   "--latency-budget", f"{b}x", "--target", "ort-cpu", "--latency-table", str(table),
                   "--max-error", "100", "--threads", "1", "--runs", str(cfg["runs"]), "--report", str(rep),
                   *shapes]
            if criterion == "obs":
                cmd += ["--calib", cfg["calib"]]
            print(f"[{name}] {key}: compiling", flush=True)
            cost = _timed(cmd, work / f"{name}-{m}-{b}.compile.log")
            r = json.loads(rep.read_text())
            stats = next(p for p in r["passes"] if p["name"].startswith("prune-"))["stats"]
            print(f"[{name}] {key}: evaluating", flush=True)
            qjson = work / f"{name}-{m}-{b}.quality.json"
            qcost = _timed([sys.executable, "-m", "benchmarks.quality.run", "--model", name, "--onnx", str(onnx),
                            "--dense", str(dense), "--out", str(qjson)], work / f"{name}-{m}-{b}.quality.log")
            q = json.loads(qjson.read_text())
            paired = r["after"].get("paired", {})
            data["rows"][key] = {
                "method": m, "budget": float(b), "criterion": criterion, "uniform": uniform,
                "command": shlex.join(["spa-compile", *cmd[3:]]).replace(str(dense), f"<{cfg['real']}>"),
                "latency_ratio": paired.get("ratio"), "dense_ms": paired.get("dense_ms"),
                "compiled_ms": paired.get("compiled_ms"), "budget_met": r.get("budget", {}).get("met"),
                "mac_ratio": r["after"]["macs"] / r["before"]["macs"] if r["before"].get("macs") else None,
                "param_ratio": r["after"]["params"] / r["before"]["params"],
                "search_rounds": stats.get("search_rounds"), "mean_error": stats.get("mean_error"),
                "compile": cost, "evaluate": qcost, "quality": q["results"],
                "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "git_commit": q["versions"].get("git_commit"),
            }
            data["command"] = f"python -m benchmarks.quality.table --model {name}"
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
            os.replace(tmp, out)
            row = data["rows"][key]
            print(f"[{name}] {key}: latency x{row['latency_ratio']:.3f}, MACs x{row['mac_ratio']:.3f}, "
                  f"{METRIC[name]} {row['quality'].get(METRIC[name])}", flush=True)
    return out


def remeasure(name: str, work: pathlib.Path, runs: int, repeats: int,
              only: set[str] | None = None) -> pathlib.Path:
    """Time every compiled model of the results again against the dense model, in one quiet batch.

    Each compile's own verdict is one paired measurement taken while other jobs may have been
    running; this re-times all rows the same way (paired, `repeats` times, median of the ratios), so
    the rows of one table are compared on one footing.
    """
    import statistics

    from spa_compiler.compile import parse_input_shapes
    from spa_compiler.ir import ModelIR
    from spa_compiler.models_zoo import real
    from spa_compiler.ort import random_feeds
    from spa_compiler.targets import make_provider

    cfg = MODELS[name]
    out = RESULTS / f"table-{name}.json"
    data = json.loads(out.read_text())
    shapes = parse_input_shapes(cfg["shapes"])
    dense = ModelIR.load(real.export_real(cfg["real"], cfg["exporter"]))
    provider = make_provider("ort-cpu", threads=1, runs=runs, input_shapes=shapes)
    feeds = random_feeds(dense, shapes)
    for key, row in data["rows"].items():
        if only is not None and key not in only:
            continue
        onnx = work / f"{name}-{row['method']}-{row['budget']}.onnx"
        if not onnx.exists():
            print(f"[{name}] {key}: {onnx} missing, not re-measured", flush=True)
            continue
        model = ModelIR.load(onnx)
        ratios = []
        for _ in range(repeats):
            t_dense, t_model = provider.time_many([dense, model], feeds)
            ratios.append(t_model.ms / t_dense.ms)
        row["remeasured"] = {"latency_ratio": statistics.median(ratios), "ratios": ratios, "runs": runs,
                             "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        print(f"[{name}] {key}: re-measured x{row['remeasured']['latency_ratio']:.3f} "
              f"(compile's verdict x{row['latency_ratio']:.3f})", flush=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, out)
    return out


def markdown() -> str:
    lines = []
    for name in MODELS:
        path = RESULTS / f"table-{name}.json"
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        metric = METRIC[name]
        dense_q = next(iter(d["rows"].values()))["quality"]
        ref = dense_q.get("dense_perplexity") if name == "smollm2" else None
        lines += [f"### {d['model']}", "",
                  f"Latency table: {d['table'].get('groups')} groups, dense {d['table'].get('dense_ms', 0):.3f} ms "
                  f"(ONNX Runtime CPU, 1 thread), profiled in {d['table'].get('wall_s')} s.", ""]
        extra = "cosine to dense" if name == "minilm" else ("top-1 agreement" if name == "efficientnet" else
                                                            "× dense")
        lines += [f"| budget | method | {metric} | {extra} | latency × (compile's verdict) | latency × (re-measured) "
                  "| MACs × | compile s / GB |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for key, r in sorted(d["rows"].items(), key=lambda kv: (-kv[1]["budget"], list(METHODS).index(kv[1]["method"]))):
            q = r["quality"]
            val = q.get(metric)
            val_s = f"{val:.2f}" if name == "smollm2" else f"{100 * val:.1f}%"
            if name == "smollm2":
                ex = f"{q.get('perplexity_ratio_to_dense', float('nan')):.3f}"
            elif name == "minilm":
                ex = f"{q.get('cosine_to_dense', float('nan')):.4f}"
            else:
                ex = f"{100 * q.get('top1_agreement', float('nan')):.1f}%"
            lat = f"{r['latency_ratio']:.3f}" + ("" if r.get("budget_met") else " (over)")
            rem = r.get("remeasured", {}).get("latency_ratio")
            lat += " | " + ("–" if rem is None else f"{rem:.3f}")
            lines.append(f"| {r['budget']}x | {r['method']} | {val_s} | {ex} | {lat} | "
                         f"{r['mac_ratio']:.3f} | {r['compile']['wall_s']:.0f} / {r['compile']['peak_rss_gb']} |")
        if ref is not None:
            lines.append(f"\nDense perplexity {ref:.2f}.")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quality.table", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS))
    ap.add_argument("--budgets", default="0.8,0.6")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--force", action="store_true",
                    help="redo rows already in the results (the latency table in --workdir is kept)")
    ap.add_argument("--workdir", help="keep compiled models, reports and logs here (default: a temp folder)")
    ap.add_argument("--markdown", action="store_true", help="print the tables from the results JSON")
    ap.add_argument("--remeasure", action="store_true",
                    help="re-time the compiled models kept in --workdir against the dense model (paired)")
    ap.add_argument("--runs", type=int, default=30, help="--remeasure: timed runs per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="--remeasure: paired measurements per row")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown())
        return 0
    if not args.model:
        ap.error("give --model (or --markdown)")
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown methods {bad}; choose from {list(METHODS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.remeasure:
        if not args.workdir:
            ap.error("--remeasure needs --workdir (where the compiled models were kept)")
        only = None
        if args.methods != ",".join(METHODS) or args.budgets != "0.8,0.6":  # a selection: just those rows
            only = {f"{m}@{b}x" for m in args.methods.split(",") if m for b in args.budgets.split(",") if b}
        print(remeasure(args.model, pathlib.Path(args.workdir), args.runs, args.repeats, only))
        return 0
    if args.workdir:
        work = pathlib.Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        print(run_model(args.model, args.budgets.split(","), methods, args.force, work))
    else:
        with tempfile.TemporaryDirectory(prefix="spa-table-") as w:
            print(run_model(args.model, args.budgets.split(","), methods, args.force, pathlib.Path(w)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
