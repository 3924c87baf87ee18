"""What the data-free criterion's inputs and damping change (issue 13, item 4): MiniLM-L6 at a
latency budget, OBSPA without calibration, with the synthetic token ids drawn in different ways and
with different Hessian damping, each compile evaluated against the dense model.

    python -m benchmarks.quality.datafree_ablation --table T --workdir W \\
        --variants uniform,zipf1,trained,uniform@0.1,uniform@1.0 [--budget 0.6] [--eval-args "..."]

A variant is ``<ids>[@<damp>]``:

* ``uniform``: the compiler's own synthetic feeds (ids uniform over the embedding table's rows).
* ``trained``: ids uniform over the rows whose embedding norm exceeds 0.6x the median (on
  MiniLM-L6 the ~1,000 ``[unused]`` rows have norm 0.46 against 1.0-1.3 for words), token types 0.
* ``zipfA``: ids over those rows with p(rank) ~ 1 / (rank + 10)^A in id order (BPE, WordPiece and
  unigram vocabularies put frequent pieces at low ids), token types 0.
* ``@D``: OBS damping D x mean(diag H) instead of the default 0.01.

These are experiments, so they patch the compiler in this process (`spa_compiler.synthetic.
synthetic_feeds`, `spa_compiler.methods.pruning.group_paths`) rather than adding options that
measured no gain. Results: benchmarks/quality/results/datafree-minilm.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import subprocess
import sys
from typing import Any

import numpy as np

from benchmarks.quality.budget import compile_args, kept_units
from benchmarks.quality.table import MODELS, RESULTS


def _embedding(model: Any, name: str) -> np.ndarray | None:
    for n in model.graph.nodes:
        if n.op == "Gather" and len(n.inputs) > 1 and n.inputs[1].name == name:
            v = getattr(n.inputs[0], "values", None)
            if v is not None:
                return np.asarray(v)
    return None


def _patch(ids: str, damp: float | None) -> None:
    import spa_compiler.methods.pruning as pruning
    import spa_compiler.synthetic as synthetic
    from spa_compiler.ort import gather_rows

    original = synthetic.synthetic_feeds

    def feeds(model: Any, input_shapes: Any, *, count: int, seed: int, min_tokens: int = 4096,
              lm_rounds: int = 4) -> list[dict[str, np.ndarray]]:
        out = original(model, input_shapes, count=count, seed=seed, min_tokens=min_tokens, lm_rounds=lm_rounds)
        if ids == "uniform":
            return out
        rng = np.random.default_rng(seed + 99)
        ints = [t for t in model.graph.inputs if np.issubdtype(np.dtype(t.dtype), np.integer)]
        res = []
        for f in out:
            f = dict(f)
            for t in ints:
                rows = gather_rows(t) or 0
                if "type" in t.name.lower() or 0 < rows <= 16:
                    f[t.name] = np.zeros_like(f[t.name])
                    continue
                table = _embedding(model, t.name) if rows >= 100 else None
                if table is None:
                    continue
                norms = np.linalg.norm(table.astype(np.float64), axis=1)
                trained = np.flatnonzero(norms > 0.6 * np.median(norms))
                if ids == "trained":
                    p = np.ones(trained.size)
                elif ids.startswith("zipf"):
                    p = 1.0 / (np.arange(trained.size) + 10.0) ** float(ids[4:] or 1.0)
                else:
                    raise SystemExit(f"unknown ids variant {ids!r}")
                p /= p.sum()
                f[t.name] = trained[rng.choice(trained.size, size=f[t.name].shape, p=p)].astype(f[t.name].dtype)
            res.append(f)
        return res

    synthetic.synthetic_feeds = feeds  # type: ignore[assignment]
    if damp is not None:
        group_paths = pruning.group_paths

        def damped(*a: Any, **k: Any) -> Any:
            k["damp"] = damp
            return group_paths(*a, **k)

        pruning.group_paths = damped  # type: ignore[assignment]


def _compile_in_process(variant: str, argv: list[str]) -> int:
    ids, _, damp = variant.partition("@")
    _patch(ids, float(damp) if damp else None)
    from spa_compiler.cli import main

    return main(argv)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quality.datafree_ablation",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="minilm", choices=["minilm"])
    ap.add_argument("--budget", default="0.6")
    ap.add_argument("--table", required=True, help="latency table (spa-compile profile) to reuse")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--variants", default="uniform,zipf1,trained,uniform@0.1,uniform@1.0")
    ap.add_argument("--eval-args", default="--n-train 2000 --n-test 1000")
    ap.add_argument("--out", default=str(RESULTS / "datafree-minilm.json"))
    ap.add_argument("--_one", help=argparse.SUPPRESS)  # internal: compile one variant in this process
    ap.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._one:
        return _compile_in_process(a._one, [x for x in a.rest if x != "--"])

    from spa_compiler.models_zoo import real

    cfg = MODELS[a.model]
    dense = real.export_real(cfg["real"], cfg["exporter"])
    work = pathlib.Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    out = pathlib.Path(a.out)
    results = json.loads(out.read_text()) if out.exists() else {"rows": {}}
    for v in a.variants.split(","):
        onnx, rep = work / f"{a.model}-{v}.onnx", work / f"{a.model}-{v}.report.json"
        spa = compile_args(cfg, dense, onnx, rep, a.budget, "criterion=obspa,error-feeds=0", a.table)
        print(f"[datafree] {v}: compiling", flush=True)
        subprocess.run([sys.executable, "-m", "benchmarks.quality.datafree_ablation", "--table", a.table,
                        "--workdir", a.workdir, "--_one", v, "--", *spa], check=True)
        qjson = work / f"{a.model}-{v}.quality.json"
        subprocess.run([sys.executable, "-m", "benchmarks.quality.run", "--model", a.model, "--onnx", str(onnx),
                        "--dense", str(dense), "--out", str(qjson), *shlex.split(a.eval_args)], check=True)
        r = json.loads(rep.read_text())
        rec = next(p for p in r["passes"] if p["name"] == "prune-to-budget")
        evaluated = json.loads(qjson.read_text())
        q = evaluated["results"]
        results["rows"][f"{v}@{a.budget}x"] = {
            "variant": v, "budget": float(a.budget),
            "quality": {k: q.get(k) for k in ("probe_accuracy", "cosine_to_dense", "cosine_to_dense_p05")},
            "latency_ratio": r["after"].get("paired", {}).get("ratio"),
            "kept_units": kept_units(rec),
            "git_commit": evaluated["versions"].get("git_commit"),
            "command": f"python -m benchmarks.quality.datafree_ablation --table T --workdir W --variants {v} "
                       f"--budget {a.budget} --eval-args {shlex.quote(a.eval_args)}",
            "load_avg": os.getloadavg(),
        }
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"[datafree] {v}: {results['rows'][f'{v}@{a.budget}x']['quality']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
