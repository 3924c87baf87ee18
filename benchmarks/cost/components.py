"""The numerical core before and after issue 12, component by component, in one process.

    python -m benchmarks.cost.components --base /tmp/cost/base/spa_compiler/criteria \\
        --out benchmarks/cost/results/components.json

`--base` is the `criteria/` folder of the starting commit (``git archive 352d8c2``): its `obs.py`
and `hessian.py` are loaded from there as separate modules and timed against today's on the same
inputs, in alternation, by CPU time of this process (`time.process_time`, less sensitive to other
processes than wall time on a shared machine; both numbers are recorded). Shapes are the real
models': SmolLM2-135M's FFN down projection (1536 -> 576, 512-token calibration feeds, 0.75 of
the neurons removed) and ResNet-50's last residual stream (2048 channels read by two 1x1 convs to
512 and the 1000-way classifier, 0.75 removed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def _load(path: Path, name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _timed(fn):  # type: ignore[no-untyped-def]
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _layer(rng: np.random.Generator, n_out: int, n_in: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mix = np.eye(n_in) + 0.5 * rng.standard_normal((n_in, n_in)) / np.sqrt(n_in)
    x = np.maximum(rng.standard_normal((n, n_in)) @ mix, 0).astype(np.float32)
    w = rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)
    h = 2.0 * x.astype(np.float64).T @ x.astype(np.float64) / n
    h[np.diag_indices_from(h)] += 0.01 * np.mean(np.diag(h))
    return w, h, x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--feeds", type=int, default=4, help="512-token feeds per statistics timing")
    ap.add_argument("--stream", type=int, default=2048, help="channels of the residual stream (ResNet-50: 2048)")
    args = ap.parse_args(argv)
    base_obs = _load(args.base / "obs.py", "base_obs")
    base_h = _load(args.base / "hessian.py", "base_hessian")
    from spa_compiler.criteria import hessian as new_h
    from spa_compiler.criteria import obs as new_obs
    from spa_compiler.criteria.paths import _relative_obs_path  # noqa: F401  (the caller of both paths)

    rng = np.random.default_rng(0)
    rows: list[dict] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def emit(row: dict) -> None:
        row["loadavg"] = [round(x, 1) for x in os.getloadavg()]
        rows.append(row)
        print(json.dumps(row), flush=True)
        args.out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")

    # 1. calibration statistics of one SmolLM2 down projection (1536 features), 512-token feeds
    feeds = [np.maximum(rng.standard_normal((512, 1536)), 0).astype(np.float32) for _ in range(args.feeds)]

    def stats(mod, **kw):  # type: ignore[no-untyped-def]
        def run():  # type: ignore[no-untyped-def]
            acc = mod.HessianAccumulator(1536, **kw)
            for f in feeds:
                acc.add_batch(f if mod is new_h else f.astype(np.float64))
            return acc.hessian(0.01)
        return run

    for label, fn in (("before", stats(base_h)), ("after", stats(new_h, product_dtype=np.float32))):
        h, wall, cpu = _timed(fn)
        emit({"component": f"Hessian of a 1536-feature layer, {args.feeds} x 512 tokens", "label": label,
              "wall_s": round(wall, 3), "cpu_s": round(cpu, 3)})

    # 2. greedy OBS path of one SmolLM2 FFN (1152 of 1536 neurons removed)
    w, h, _ = _layer(rng, 576, 1536, 4096)
    groups = [np.array([i]) for i in range(1536)]
    orders = {}
    for label, mod in (("before", base_obs), ("after", new_obs)):
        p, wall, cpu = _timed(lambda mod=mod: mod.greedy_prune(w, h, groups, levels=list(range(1153)), snapshots=False))
        orders[label] = p.order.tolist()
        emit({"component": "greedy OBS path, SmolLM2 FFN (576 x 1536, 1152 neurons)", "label": label,
              "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
              **({"same_order_as_before": orders["before"] == orders["after"]} if label == "after" else {})})

    # 3. joint path of ResNet-50's last residual stream (3 consumers of 2048 channels, 1536 removed)
    width = args.stream
    views = [_layer(rng, n_out, width, 2 * width)[:2] for n_out in (width // 4, width // 4, 1000)]
    unit_cols = [[np.array([i]) for i in range(width)] for _ in views]
    n_remove = 3 * width // 4

    def reference():  # type: ignore[no-untyped-def]
        ws = [v[0].copy() for v in views]
        hinvs = [base_obs.inverse_hessian(base_obs.prepare_hessian(v[1])) for v in views]
        remaining = list(range(width))
        order = []
        for _ in range(n_remove):
            total = np.zeros(len(remaining))
            for wv, hi, uc in zip(ws, hinvs, unit_cols):
                total += base_obs.group_errors(wv, hi, [uc[u] for u in remaining])
            u = remaining.pop(int(np.argmin(total)))
            order.append(u)
            for k, uc in enumerate(unit_cols):
                ws[k], hinvs[k] = base_obs.remove_group(ws[k], hinvs[k], uc[u])
        return order

    def fast():  # type: ignore[no-untyped-def]
        return new_obs.joint_greedy_order([v[0] for v in views], [new_obs.prepare_hessian(v[1]) for v in views],
                                          unit_cols, n_remove)[0].tolist()

    for label, fn in (("before", reference), ("after", fast)):
        order, wall, cpu = _timed(fn)
        orders[label] = order
        emit({"component": f"joint OBS path, a residual stream read by 3 layers ({width} channels -> "
                           f"{width // 4}, {width // 4}, 1000; {n_remove} removed)",
              "label": label, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
              **({"same_order_as_before": orders["before"] == orders["after"]} if label == "after" else {})})
    meta = {"cpus": os.cpu_count(), "numpy": np.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "python -m benchmarks.cost.components " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
