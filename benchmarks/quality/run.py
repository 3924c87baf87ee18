"""One command for the quality of a dense or compressed real model (issue 5).

    python -m benchmarks.quality.run --model smollm2 --onnx small.onnx --export-dense --out r.json
    python -m benchmarks.quality.run --model minilm --export-dense --quick --out r.json
    python -m benchmarks.quality.run --model smollm2 --write-calib calib/smollm2 [--calib-n 64]

--model        smollm2 | minilm | efficientnet
--onnx PATH    the model to evaluate (dense or compressed; ONNX Runtime CPU)
--dense PATH   the dense model to compare with (SmolLM2: its perplexity and the ratio; MiniLM:
               embedding cosine; EfficientNet: top-1 agreement); its outputs are cached
--export-dense export the dense model with models_zoo.real.export_real (cached) and use it as
               --dense, and as --onnx when --onnx is not given (--exporter torchscript|dynamo)
--quick        small sizes for smoke tests (SmolLM2 2 windows, MiniLM 1000/500,
               EfficientNet 300/300)
--windows / --n-train / --n-test / --n   override sizes
--threads      ORT intra-op threads (default 2, the CI machine's cores)
--write-calib DIR   write calibration .npz feeds (disjoint from the evaluation data) for
               ``spa-compile --calib DIR``; with no --onnx, nothing is evaluated
--out FILE     JSON with metrics, command line, date, versions, dataset sizes and timings
--merge FILE   also store that record in the JSON object FILE under the key <model>[-<exporter>]
               (how benchmarks/quality/dense_reference.json is made)

Prints a small table. Exit 0 on success, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time
from typing import Any

MODELS = {"smollm2": "smollm2-135m", "minilm": "minilm-l6", "efficientnet": "efficientnet-lite0"}
QUICK = {
    "smollm2": {"windows": 2},
    "minilm": {"n_train": 1000, "n_test": 500},
    "efficientnet": {"n": 300, "n_train": 300},
}
FULL = {
    "smollm2": {"windows": 16},
    "minilm": {"n_train": 8000, "n_test": 2568},
    "efficientnet": {"n": 2000, "n_train": 2000},
}
CALIB_DEFAULT_N = {"smollm2": 64, "minilm": 1024, "efficientnet": 256}


def versions() -> dict[str, str]:
    """Versions of what the measurement depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("onnxruntime", "onnx", "numpy", "scikit-learn", "transformers", "tokenizers",
                "torch", "spa-compiler"):  # fmt: skip
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    try:
        root = pathlib.Path(__file__).resolve().parents[2]
        out["git_commit"] = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except Exception:  # noqa: BLE001 - not a checkout
        pass
    out["cpu_count"] = str(os.cpu_count())
    return out


def _sizes(args: argparse.Namespace) -> dict[str, int]:
    sizes = dict((QUICK if args.quick else FULL)[args.model])
    for key in ("windows", "n_train", "n_test", "n"):
        val = getattr(args, key)
        if val is not None:
            if key not in sizes:
                raise SystemExit(
                    f"run: --{key.replace('_', '-')} does not apply to --model {args.model}"
                )
            sizes[key] = val
    return sizes


def evaluate(model: str, onnx_path: str, dense: str | None, sizes: dict[str, int],
             threads: int) -> dict[str, Any]:  # fmt: skip
    """Run the metric of `model` on `onnx_path` (and `dense`)."""
    from benchmarks.quality import evaluate as ev

    if model == "smollm2":
        return ev.smollm2_perplexity(onnx_path, dense_path=dense, threads=threads, **sizes)
    if model == "minilm":
        return ev.minilm_probe(onnx_path, dense_path=dense, threads=threads, **sizes)
    return ev.efficientnet_quality(onnx_path, dense_path=dense, threads=threads, **sizes)


_TABLE_KEYS = {
    "smollm2": ["perplexity", "dense_perplexity", "perplexity_ratio_to_dense", "kl_to_dense",
                "top1_agreement", "windows", "seq",
                "tokens_scored", "seconds_per_window"],
    "minilm": ["probe_accuracy", "cosine_to_dense", "cosine_to_dense_min", "n_train", "n_test",
               "seconds_per_sentence"],
    "efficientnet": ["probe_accuracy", "top1_agreement", "top5_contains_dense_top1", "kl_to_dense",
                     "logit_cosine_to_dense", "features", "n_train", "n_test", "seconds_per_image"],
}  # fmt: skip


def table(model: str, res: dict[str, Any], wall_s: float) -> str:
    rows = [(k, res[k]) for k in _TABLE_KEYS[model] if k in res] + [("wall seconds", wall_s)]
    width = max(len(k) for k, _ in rows)
    lines = [f"{MODELS[model]}: {res['onnx']['path']}"]
    for k, v in rows:
        txt = f"{v:.4f}" if isinstance(v, float) else str(v)
        lines.append(f"  {k:<{width}}  {txt}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.quality.run", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--model", required=True, choices=sorted(MODELS))
    p.add_argument("--onnx", help="ONNX model to evaluate")
    p.add_argument("--dense", help="dense ONNX model to compare with")
    p.add_argument("--export-dense", action="store_true", help="export the dense model first")
    p.add_argument("--exporter", default="torchscript", choices=("torchscript", "dynamo"))
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--windows", type=int, help="SmolLM2: 512-token windows")
    p.add_argument("--n-train", type=int, dest="n_train", help="probe training examples")
    p.add_argument("--n-test", type=int, dest="n_test", help="MiniLM: probe test examples")
    p.add_argument("--n", type=int, help="EfficientNet: test images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write-calib", metavar="DIR", help="write calibration .npz feeds to DIR")
    p.add_argument("--calib-n", type=int, help="number of calibration feeds")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--merge", metavar="FILE", help="store the record in JSON object FILE too")
    args = p.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from benchmarks.quality import evaluate as ev

    record: dict[str, Any] = {
        "command": shlex.join(
            [sys.executable, "-m", "benchmarks.quality.run", *(argv or sys.argv[1:])]
        ),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": MODELS[args.model],
        "versions": versions(),
    }
    onnx_path, dense = args.onnx, args.dense
    if args.export_dense:
        from spa_compiler.models_zoo import real

        t = time.perf_counter()
        exported = str(real.export_real(MODELS[args.model], args.exporter))
        record["export_seconds"] = round(time.perf_counter() - t, 1)
        dense = dense or exported
        onnx_path = onnx_path or exported
        print(f"dense model: {exported}")
    if args.write_calib:
        n = args.calib_n or CALIB_DEFAULT_N[args.model]
        feeds = {"smollm2": ev.smollm2_calibration, "minilm": ev.minilm_calibration,
                 "efficientnet": ev.efficientnet_calibration}[args.model](n)  # fmt: skip
        count = ev.write_calibration_dir(args.write_calib, feeds)
        record["calibration"] = {
            "dir": str(pathlib.Path(args.write_calib).resolve()),
            "feeds": count,
        }
        print(f"wrote {count} calibration feeds to {args.write_calib}")
    if onnx_path is None:
        if not args.write_calib:
            p.error("give --onnx PATH (or --export-dense, or --write-calib DIR)")
        if args.out:
            pathlib.Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
        return 0
    sizes = _sizes(args)
    t0 = time.perf_counter()
    res = evaluate(args.model, onnx_path, dense, sizes, args.threads)
    wall = time.perf_counter() - t0
    record.update({"sizes": sizes, "quick": bool(args.quick), "wall_seconds": round(wall, 1),
                   "results": res})  # fmt: skip
    print(table(args.model, res, round(wall, 1)))
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")
    if args.merge:
        key = MODELS[args.model] + (
            f"-{args.exporter}" if args.export_dense and not args.onnx else ""
        )
        merged = pathlib.Path(args.merge)
        table_ = json.loads(merged.read_text()) if merged.is_file() else {}
        table_[key] = record
        merged.parent.mkdir(parents=True, exist_ok=True)
        merged.write_text(json.dumps(dict(sorted(table_.items())), indent=2) + "\n")
        print(f"stored as {key!r} in {merged}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
