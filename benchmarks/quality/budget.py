"""Quality at the budget (issue 13): compile a real model to a latency budget with a given set of
pass options, evaluate it against the dense model (task metric + fidelity), and record the
search's predicted and measured output error per round and the compile's cost.

    python -m benchmarks.quality.budget --model smollm2 --budget 0.8 --row e2e \\
        --options "criterion=obs" --calib --table W/smollm2-table.json --workdir W
    python -m benchmarks.quality.budget --markdown          # the tables from the committed JSON

Each row compiles with `prune-to-budget{<options>}` (the default pipeline's pass), `--target ort-cpu
--threads 1`, the given latency table (profiled once with `spa-compile profile`, so rows do not
re-profile), `--max-error 100` (the summed-error bound lifted, as in the criteria table, so every row
reaches the budget), `--no-cache` (rows measured before 2026-12-02 ran with the timing cache on, so
a row could reuse an earlier row's timings: row e2e-1202c of budget-smollm2.json did) and `--calib
<the model's calibration function>` when `--calib` is given. Then
`benchmarks.quality.run` evaluates the output against the dense model. Results:
benchmarks/quality/results/budget-<model>.json, one record per row key `<row>@<budget>x`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import pathlib
import shlex
import sys
from typing import Any

from benchmarks.quality.table import MODELS, RESULTS, _from_log, _spa, _timed

FIDELITY = {"smollm2": ("kl_to_dense", "top1_agreement"), "minilm": ("cosine_to_dense", "cosine_to_dense_p05"),
            "efficientnet": ("top1_agreement", "kl_to_dense")}
METRIC = {"smollm2": "perplexity", "minilm": "probe_accuracy", "efficientnet": "probe_accuracy"}


def compile_args(cfg: dict[str, Any], dense: Any, onnx: pathlib.Path, report: pathlib.Path, budget: str,
                 options: str, table: Any) -> list[str]:
    """`spa-compile` arguments (after the program) of one budget row: `prune-to-budget{options}` on
    ORT CPU, 1 thread, the given latency table, the summed-error bound lifted, the timing cache off
    (every row's search times its candidates itself: the rows' plans and compile costs do not
    depend on which rows ran before)."""
    return [str(dense), "-o", str(onnx), "-p", f"cleanup,prune-to-budget{{{options}}},cleanup",
            "--latency-budget", f"{budget}x", "--target", "ort-cpu", "--latency-table", str(table),
            "--max-error", "100", "--threads", "1", "--runs", str(cfg["runs"]), "--report", str(report),
            "--no-cache",
            *[a for s in cfg["shapes"] for a in ("--input-shape", s)]]


def kept_units(rec: dict[str, Any]) -> dict[str, str]:
    """unit kind -> "kept/total" over the groups of a pruning pass's report record."""
    units: dict[str, list[int]] = {}
    for d in rec.get("details", []):
        if "unit" in d and "kept" in d:
            units.setdefault(d["unit"], [0, 0])
            units[d["unit"]][0] += d["kept"]
            units[d["unit"]][1] += d["units"]
    return {u: f"{k}/{n}" for u, (k, n) in units.items()}


def run_row(name: str, budget: str, row: str, options: str, calib: bool, table: pathlib.Path,
            work: pathlib.Path, eval_args: list[str], reuse: bool = False,
            compile_only: bool = False, calib_spec: str | None = None) -> dict[str, Any] | None:
    from spa_compiler.models_zoo import real

    cfg = MODELS[name]
    dense = real.export_real(cfg["real"], cfg["exporter"])
    stem = f"{name}-{row}-{budget}"
    onnx, rep = work / f"{stem}.onnx", work / f"{stem}.report.json"
    cmd = [*_spa(), *compile_args(cfg, dense, onnx, rep, budget, options, table)]
    spec = (calib_spec or cfg["calib"]) if calib else None
    if spec:
        cmd += ["--calib", spec]
    log = work / f"{stem}.compile.log"
    if reuse and rep.exists() and onnx.exists():  # compiled by an earlier (interrupted) run
        cost = {**_from_log(log), "reused": True}
    else:
        print(f"[{name}] {row}@{budget}x: compiling", flush=True)
        cost = _timed(cmd, log)
    if compile_only:  # evaluated later with --reuse (each part fits a shorter slot of the CPU lock)
        return None
    r = json.loads(rep.read_text())
    rec = next(p for p in r["passes"] if p["name"] == "prune-to-budget")
    stats = rec["stats"]
    rounds = next((d["search_rounds"] for d in rec.get("details", []) if "search_rounds" in d), [])
    print(f"[{name}] {row}@{budget}x: evaluating", flush=True)
    qjson = work / f"{stem}.quality.json"
    qcost = _timed([sys.executable, "-m", "benchmarks.quality.run", "--model", name, "--onnx", str(onnx),
                    "--dense", str(dense), "--out", str(qjson), *eval_args], work / f"{stem}.quality.log")
    q = json.loads(qjson.read_text())
    paired = r["after"].get("paired", {})
    keep = ("round", "status", "predicted_ms", "measured_ms", "mean_error", "predicted_output_error",
            "measured_output_error", "measured_output_error_by_class", "class_weights", "uniform_share",
            "family", "skipped")
    return {
        "row": row, "budget": float(budget), "options": options, "calib": calib,
        "calib_spec": spec,
        "command": shlex.join(["spa-compile", *cmd[3:]]).replace(str(dense), f"<{cfg['real']}>"),
        "evaluate_command": shlex.join(["python", "-m", "benchmarks.quality.run", "--model", name, "--onnx",
                                        "<compiled>", "--dense", f"<{cfg['real']}>", *eval_args]),
        "latency_ratio": paired.get("ratio"), "budget_met": r.get("budget", {}).get("met"),
        "mac_ratio": r["after"]["macs"] / r["before"]["macs"] if r["before"].get("macs") else None,
        "kept_units": kept_units(rec),
        "search_rounds": [{k: v for k, v in x.items() if k in keep} for x in rounds],
        "stats": {k: v for k, v in stats.items() if k in (
            "output_error", "output_error_final", "output_error_measure", "output_error_feeds", "output_error_plans_measured",
            "output_error_class_weights", "calibration_stages", "groups_recalibrated", "seconds_sequential",
            "mean_error", "search_rounds", "criterion")},
        "compile": cost, "evaluate": qcost, "quality": q["results"],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": q["versions"].get("git_commit"), "load_avg": os.getloadavg(),
    }


def markdown() -> str:
    lines = []
    for name in MODELS:
        path = RESULTS / f"budget-{name}.json"
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        f1, f2 = FIDELITY[name]
        lines += [f"#### {MODELS[name]['real']}", "",
                  f"| budget | row | options | {METRIC[name]} | {f1} | {f2} | latency × | MACs × | kept | "
                  "output error (search) | compile s / GB |", "|" + " --- |" * 11]
        for key, r in sorted(d["rows"].items(), key=lambda kv: (-kv[1]["budget"], kv[0])):
            q = r["quality"]

            def f(v: Any, pct: bool = False) -> str:
                if v is None:
                    return "–"
                return f"{100 * v:.1f}%" if pct else f"{v:.4g}"
            metric = f(q.get(METRIC[name]), pct=name != "smollm2")
            if name == "smollm2":
                metric += f" ({q.get('perplexity_ratio_to_dense', float('nan')):.2f}×)"
            lat = f(r.get("latency_ratio")) + ("" if r.get("budget_met") else " (over)")
            kept = ", ".join(f"{u} {v}" for u, v in sorted(r.get("kept_units", {}).items()))
            oe = r["stats"].get("output_error")
            lines.append(f"| {r['budget']}x | {r['row']} | `{r['options']}`{' + calib' if r['calib'] else ''} | "
                         f"{metric} | {f(q.get(f1), name == 'efficientnet' and f1 == 'top1_agreement')} | "
                         f"{f(q.get(f2), name == 'smollm2' and f2 == 'top1_agreement')} | {lat} | "
                         f"{f(r.get('mac_ratio'))} | {kept} | {f(oe)} | "
                         f"{r['compile']['wall_s']:.0f} / {r['compile'].get('peak_rss_gb')} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quality.budget", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS))
    ap.add_argument("--budget", default="0.6")
    ap.add_argument("--row", help="the row's name in the results")
    ap.add_argument("--options", default="", help="prune-to-budget options, e.g. criterion=obs,sequential=0")
    ap.add_argument("--calib", action="store_true", help="compile with the model's calibration data")
    ap.add_argument("--calib-spec", help="other calibration data than the model's function (implies --calib), "
                    "e.g. benchmarks/quality/evaluate.py:minilm_calibration_256")
    ap.add_argument("--table", help="latency table (spa-compile profile) to reuse")
    ap.add_argument("--workdir", help="compiled models, reports and logs")
    ap.add_argument("--eval-args", default="", help="extra arguments of benchmarks.quality.run, e.g. '--windows 8'")
    ap.add_argument("--reuse", action="store_true", help="keep a compiled model and report already in --workdir")
    ap.add_argument("--compile-only", action="store_true", help="compile and stop (evaluate later with --reuse)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown())
        return 0
    if not (args.model and args.row and args.table and args.workdir):
        ap.error("give --model, --row, --table and --workdir (or --markdown)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = pathlib.Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    row = run_row(args.model, args.budget, args.row, args.options, args.calib or bool(args.calib_spec),
                  pathlib.Path(args.table), work, shlex.split(args.eval_args), reuse=args.reuse,
                  compile_only=args.compile_only, calib_spec=args.calib_spec)
    if row is None:
        return 0
    out = RESULTS / f"budget-{args.model}.json"
    data: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"model": MODELS[args.model]["real"],
                                                                             "rows": {}}
    data["rows"][f"{args.row}@{args.budget}x"] = row
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, out)
    print(json.dumps({k: row[k] for k in ("row", "latency_ratio", "budget_met", "kept_units")}, default=str))
    print({k: v for k, v in row["quality"].items() if isinstance(v, float)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
