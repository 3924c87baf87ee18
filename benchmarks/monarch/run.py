"""Monarch alone, pruning alone, and both, at the same measured latency on ONNX Runtime CPU.

For one real model and one budget (a fraction of the dense model's measured latency, 1 thread):

    monarch   substitute-monarch on the FFN layers (calibrated projection + ALS), latency search
    pruning   prune-to-budget{criterion=obs,units=neuron} (FFN neurons, ZipLM OBS + re-fit)
    both      prune-to-budget{criterion=obs,units=neuron} to `--both-prune` of dense, then
              substitute-monarch on the pruned FFNs to the budget (relative to the pruned model's
              measured ratio, so the final target is the same fraction of the original dense model)

Every output is then re-timed with the dense model in one alternating batch (`--runs` runs each;
the ratios are what the tables report) and evaluated with `benchmarks.quality.run`.

    python -m benchmarks.monarch.run --model minilm --budget 0.8 --workdir /tmp/mon \
        --out benchmarks/monarch/results/minilm-0.8.json [--rows monarch,pruning,both] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS: dict[str, dict[str, Any]] = {
    "minilm": {"real": "minilm-l6", "exporter": "torchscript",
               "shapes": ["input_ids:4x128", "attention_mask:4x128", "token_type_ids:4x128"],
               "calib": "benchmarks/quality/evaluate.py:minilm_calibration",
               "ffn": r"layer\.[0-9]+/(intermediate|output)/dense"},
    "smollm2": {"real": "smollm2-135m", "exporter": "dynamo", "shapes": ["input_ids:1x128"],
                "calib": "benchmarks/quality/evaluate.py:smollm2_calibration",
                "ffn": r"mlp"},
}


def _spa() -> list[str]:
    return [sys.executable, "-m", "spa_compiler"]


def _run(cmd: list[str], log: pathlib.Path) -> float:
    t = time.perf_counter()
    with log.open("w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        p = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    if p.returncode not in (0,):
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)} (log {log})")
    return round(time.perf_counter() - t, 1)


def _pass_stats(report: pathlib.Path, name: str) -> dict[str, Any]:
    r = json.loads(report.read_text())
    return next(p for p in r["passes"] if p["name"] == name).get("stats", {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), required=True)
    ap.add_argument("--budget", type=float, default=0.8)
    ap.add_argument("--both-prune", type=float, default=0.9)
    ap.add_argument("--rows", default="monarch,pruning,both")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--refine", type=int, default=4)
    ap.add_argument("--variants", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="quality on the harness's --quick sizes")
    a = ap.parse_args()
    from spa_compiler.models_zoo import real

    cfg = MODELS[a.model]
    work = pathlib.Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    dense = real.export_real(cfg["real"], cfg["exporter"])
    shapes = [x for s in cfg["shapes"] for x in ("--input-shape", s)]
    common = ["--target", "ort-cpu", "--max-error", "100", "--threads", "1", "--runs", str(a.runs), *shapes,
              "--calib", cfg["calib"]]
    mon = f"substitute-monarch{{include={cfg['ffn']},refine={a.refine},variants={a.variants}}}"
    prune = "prune-to-budget{criterion=obs,units=neuron}"
    out_path = pathlib.Path(a.out)
    data: dict[str, Any] = json.loads(out_path.read_text()) if out_path.exists() else {}
    data.update(model=cfg["real"], budget=a.budget, command=" ".join(["python -m benchmarks.monarch.run", *sys.argv[1:]]))
    rows = data.setdefault("rows", {})
    for row in a.rows.split(","):
        onnx_out = work / f"{a.model}-{row}-{a.budget}.onnx"
        rep = work / f"{a.model}-{row}-{a.budget}.report.json"
        rec: dict[str, Any] = {}
        if row == "monarch":
            rec["compile_s"] = _run([*_spa(), str(dense), "-o", str(onnx_out), "-p", f"cleanup,{mon},cleanup",
                                     "--latency-budget", f"{a.budget}x", "--report", str(rep), *common],
                                    work / f"{row}.log")
            rec["stats"] = _pass_stats(rep, "substitute-monarch")
        elif row == "pruning":
            rec["compile_s"] = _run([*_spa(), str(dense), "-o", str(onnx_out), "-p", f"cleanup,{prune},cleanup",
                                     "--latency-budget", f"{a.budget}x", "--report", str(rep), *common],
                                    work / f"{row}.log")
            rec["stats"] = _pass_stats(rep, "prune-to-budget")
        elif row == "both":
            mid = work / f"{a.model}-both-pruned-{a.both_prune}.onnx"
            rep1 = work / f"{a.model}-both-pruned-{a.both_prune}.report.json"
            t1 = _run([*_spa(), str(dense), "-o", str(mid), "-p", f"cleanup,{prune},cleanup",
                       "--latency-budget", f"{a.both_prune}x", "--report", str(rep1), *common], work / "both-prune.log")
            s1 = _pass_stats(rep1, "prune-to-budget")
            r1 = float(s1["measured_ms"]) / float(s1["dense_ms"])
            t2 = _run([*_spa(), str(mid), "-o", str(onnx_out), "-p", f"cleanup,{mon},cleanup",
                       "--latency-budget", f"{a.budget / r1:.4f}x", "--report", str(rep), *common],
                      work / "both-monarch.log")
            rec.update(compile_s=round(t1 + t2, 1), prune_stats=s1, prune_ratio=r1,
                       stats=_pass_stats(rep, "substitute-monarch"))
        else:
            raise SystemExit(f"unknown row {row!r}")
        rec["onnx"] = str(onnx_out)
        rows[row] = rec
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    # one alternating batch: dense and every output
    from spa_compiler.compile import parse_input_shapes
    from spa_compiler.ir import ModelIR
    from spa_compiler.latency.ort_cpu import OrtCpuProvider
    from spa_compiler.ort import random_feeds

    names = [r for r in rows if pathlib.Path(rows[r]["onnx"]).exists()]
    models = [ModelIR.load(dense, check=False)] + [ModelIR.load(rows[r]["onnx"], check=False) for r in names]
    feeds = random_feeds(models[0].to_proto(weights=False), parse_input_shapes(cfg["shapes"]), seed=0)
    times = OrtCpuProvider(threads=1, runs=max(a.runs, 20)).time_many(models, feeds)
    data["remeasured"] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                          "load_average": os.getloadavg(), "dense_ms": times[0].ms,
                          "ratios": {r: times[i + 1].ms / times[0].ms for i, r in enumerate(names)}}
    del models
    for r in names:
        q = work / f"{a.model}-{r}-{a.budget}.quality.json"
        cmd = [sys.executable, "-m", "benchmarks.quality.run", "--model", a.model, "--onnx", rows[r]["onnx"],
               "--dense", str(dense), "--out", str(q)] + (["--quick"] if a.quick else [])
        rows[r]["evaluate_s"] = _run(cmd, work / f"{r}.quality.log")
        rows[r]["quality"] = json.loads(q.read_text())
        out_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(out_path)


if __name__ == "__main__":
    main()
