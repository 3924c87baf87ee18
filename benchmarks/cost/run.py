"""Wall time and peak memory of whole compiles at the sizes users bring (issue 12).

    python -m benchmarks.cost.models resnet50 /tmp/cost/resnet50.onnx     # once per model
    python -m benchmarks.cost.run resnet50-b1 --models /tmp/cost --out benchmarks/cost/results/after.jsonl
    python -m benchmarks.cost.run resnet50-b1 --models /tmp/cost --pythonpath /tmp/cost/base_pkg \\
        --label before --out benchmarks/cost/results/before.jsonl       # another checkout

Each case runs `python -m spa_compiler ...` in a fresh process under GNU time (wall seconds and
peak resident set size of the process), with stderr (the progress log) captured, and appends one
JSON line: case, label, command, wall_s, peak_rss_mb, exit code, the compile's verdict and the
prune pass's own seconds, the machine's load average before and after, and the git commit of the
code that ran. `--pythonpath` runs another checkout laid out as installed (passes/ copied to
spa_compiler/passes, models_zoo/ and runtime_ops/ likewise), e.g. the commit before the change.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CASES: dict[str, tuple[str, list[str]]] = {
    # name: (model file in --models, compile arguments)
    "resnet50-b1": ("resnet50.onnx", ["--target", "ort-cpu", "--latency-budget", "0.6x",
                                      "--input-shape", "input:1x3x224x224"]),
    "minilm-4x128": ("minilm.onnx", ["--target", "ort-cpu", "--latency-budget", "0.6x",
                                     "--input-shape", "input_ids:4x128", "--input-shape", "attention_mask:4x128"]),
    "resnet50-b32-cuda": ("resnet50.onnx", ["--target", "ort-cuda", "--precision", "fp16", "--latency-budget",
                                            "0.6x", "--input-shape", "input:32x3x224x224"]),
    "resnet-mini-cuda": ("resnet-mini.onnx", ["--target", "ort-cuda", "--precision", "fp16", "--latency-budget",
                                              "0.6x", "--input-shape", "input:2x3x224x224"]),  # rehearsals
    "mobilenetv3-b32-cuda": ("mobilenetv3.onnx", ["--target", "ort-cuda", "--precision", "fp16", "--latency-budget",
                                                  "0.6x", "--input-shape", "input:32x3x224x224"]),
    "llama1b-calib": ("model.onnx", [
        "-p", "cleanup,prune-ziplm{criterion=obs,units=neuron,ratio=0.25},cleanup", "--no-measure",
        "--validate", "end", "--input-shape", "input_ids:1x512", "--calib", str(HERE / "calib.py") + ":llama1b_8x512"]),
    "llama-mini-calib": ("model.onnx", [  # the 1B case's path at a tiny size (tests, CPU rehearsal)
        "-p", "cleanup,prune-ziplm{criterion=obs,units=neuron,ratio=0.25},cleanup", "--no-measure",
        "--validate", "end", "--input-shape", "input_ids:1x128", "--calib", str(HERE / "calib.py") + ":llama_mini_8x128"]),
    "smollm2-calib64x512": ("smollm2.onnx", [
        "-p", "cleanup,prune-ziplm{criterion=obs,units=neuron,ratio=0.25},cleanup", "--no-measure",
        "--input-shape", "input_ids:1x512", "--calib", str(HERE / "calib.py") + ":smollm2_64x512"]),
    "smollm2-calib16x512": ("smollm2.onnx", [
        "-p", "cleanup,prune-ziplm{criterion=obs,units=neuron,ratio=0.25},cleanup", "--no-measure",
        "--input-shape", "input_ids:1x512", "--calib", str(HERE / "calib.py") + ":smollm2_16x512"]),
}


def _commit(pythonpath: str | None) -> str:
    root = Path(pythonpath) if pythonpath else HERE.parent.parent
    for cand in (root / "COMMIT", root.parent / "COMMIT"):
        if cand.exists():
            return cand.read_text().strip()
    try:
        return subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_case(case: str, models: Path, *, pythonpath: str | None, label: str, extra: list[str],
             timeout: float | None = None, logs: Path | None = None, keep_cache: bool = False) -> dict:
    model_file, args = CASES[case]
    commit = _commit(pythonpath)  # the code that runs (taken before: the tree may move meanwhile)
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        if not keep_cache:  # a fresh timing cache: the compile profiles everything
            env["SPA_COMPILER_CACHE"] = str(Path(tmp) / "cache")
            env.pop("SPA_COMPILER_NO_CACHE", None)
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "spa_compiler", str(models / model_file), "-o", str(Path(tmp) / "out.onnx"),
               "--report", str(report), *args, *extra]
        load0 = os.getloadavg()
        log = Path(tmp) / "stderr.txt"
        started = time.monotonic()
        with log.open("w") as err:
            proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=err)
            timed_out = False
            deadline = started + timeout if timeout else None
            while True:  # wait4: this child's own peak RSS (no GNU time needed)
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    proc.terminate()
                    timed_out = True
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.2)
        wall = time.monotonic() - started
        code = os.waitstatus_to_exitcode(status)
        rss_kb = usage.ru_maxrss
        stderr = log.read_text(errors="replace")
        load1 = os.getloadavg()
        if logs is not None:
            logs.mkdir(parents=True, exist_ok=True)
            (logs / f"{case}-{label}.progress.log").write_text(stderr)
        rep = json.loads(report.read_text()) if report.exists() else {}
    prune = next((p for p in rep.get("passes", []) if str(p.get("name", "")).startswith("prune")), {})
    stats = prune.get("stats") or {}
    return {
        "case": case, "label": label, "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "spa-compile " + " ".join([model_file, *args, *extra]),
        "exit": code, "timed_out": timed_out, "wall_s": round(wall, 2), "peak_rss_mb": round(int(rss_kb) / 1024, 1),
        "prune_pass_s": prune.get("seconds"), "status": rep.get("status"), "error": rep.get("error"),
        "budget": rep.get("budget"), "ratio": ((rep.get("after") or {}).get("paired") or {}).get("ratio"),
        "mean_error": stats.get("mean_error"), "search_rounds": stats.get("search_rounds"),
        "kept": {d["group"]: d["kept"] for d in prune.get("details") or [] if "kept" in d},
        "loadavg_before": [round(x, 2) for x in load0], "loadavg_after": [round(x, 2) for x in load1],
        "cpus": os.cpu_count(), "cache": "kept" if keep_cache else "fresh", "progress_log_head": stderr.splitlines()[:3],
        "stderr_tail": stderr.splitlines()[-15:], "model_mb": round(sum(f.stat().st_size for f in models.iterdir() if f.is_file() and (
            model_file == "model.onnx" or f.name.startswith(model_file))) / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="+", choices=sorted(CASES))
    ap.add_argument("--models", type=Path, required=True, help="folder with the models of benchmarks.cost.models")
    ap.add_argument("--out", type=Path, required=True, help="JSON lines file to append to")
    ap.add_argument("--pythonpath", help="run another checkout (installed layout) instead of this one")
    ap.add_argument("--label", default="after")
    ap.add_argument("--timeout", type=float, default=None, help="stop a case after this many seconds")
    ap.add_argument("--logs", type=Path, help="write each case's whole progress log (stderr) here")
    ap.add_argument("--keep-cache", action="store_true", help="use the caller's timing cache (default: a fresh one)")
    args, extra = ap.parse_known_args(argv)  # anything else (after --) goes to spa-compile
    extra = [a for a in extra if a != "--"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for case in args.cases:
        row = run_case(case, args.models, pythonpath=args.pythonpath, label=args.label, extra=extra,
                       timeout=args.timeout, logs=args.logs, keep_cache=args.keep_cache)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{case} [{args.label}]: {row['wall_s']:.1f} s, {row['peak_rss_mb']:.0f} MB, exit {row['exit']}, "
              f"status {row['status']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
