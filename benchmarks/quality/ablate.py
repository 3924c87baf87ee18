"""Where the fidelity to the dense model is lost (issue 13): one fixed plan, several re-fits.

    python -m benchmarks.quality.ablate --model minilm --report W/minilm-e2e-0.6.report.json \\
        --out benchmarks/quality/results/ablate-minilm.json

The plan (kept units per group) is read from a compile report, so the search's choice is held
fixed and only what follows it varies:

- ``layer-oneshot``: each pruned consumer re-fitted by OBS on the dense model's inputs (sequential=0,
  refit=layer: the compiler before issue 13);
- ``layer-seq4``: the same re-fit from the compressed model's inputs, 4 stages (sequential=4);
- ``dense-1`` / ``dense-4``: every linear layer from the first pruned one on re-fitted to the dense
  model's outputs given the compressed inputs, bias included (`criteria.refit`), in 1 / 4 stages
  (sequential=0);
- ``residual``: the same with the residual's error in the target of a layer that feeds a residual
  Add (one such layer a stage);
- ``layer-ln``: ``layer-oneshot``, then every LayerNormalization's scale and bias re-fitted, in
  graph order, per channel by least squares to the dense model's LN output on the calibration
  feeds (2 parameters a channel: a correction that cannot over-fit);
- ``isolated``: each group's cut alone (every other group dense, one-shot re-fit): its own output
  error; the sum against the joint plan's says how much compounds.

With ``--criterion obspa`` the units are ranked and re-fitted data-free (the model's response to
synthetic feeds) at the same plan's counts. The hybrid variants (``HYBRIDS``, one-shot, with
``--criterion obs``) take the removal order from one criterion and the re-fit's Hessians from the
other (or no re-fit): they say whether data-free OBSPA loses in which units it removes or in how it
re-fits the consumers.

Every figure is measured on held-out data (the evaluation split, never the calibration):
``1 - cosine`` of the mean-pooled sentence embeddings (the harness's `cosine_to_dense`), and per
residual-stream checkpoint (every LayerNormalization output both models have) the mean token cosine.
Only MiniLM has its held-out feeds here.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import pathlib
import sys
import time
from typing import Any

import numpy as np


def _held_out(n: int) -> list[str]:
    from benchmarks.quality import evaluate

    texts, _ = evaluate._movie_data()
    _tr, te = evaluate.movie_split(2000, 1000)
    return [texts[i] for i in te[:n]]


def _sentence_cos(model: Any, dense_emb: np.ndarray, texts: list[str]) -> float:
    from benchmarks.quality import evaluate
    from spa_compiler.ort import make_session

    emb = evaluate.minilm_embeddings(make_session(model, threads=2, optimize=True), texts)
    a = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    b = dense_emb / np.linalg.norm(dense_emb, axis=1, keepdims=True)
    return float(np.mean(np.sum(a * b, axis=1)))


def _checkpoints(model: Any, dense: Any, texts: list[str]) -> dict[str, float]:
    """Mean token cosine at every LayerNormalization output of both models."""
    from benchmarks.quality import evaluate
    from spa_compiler.calibration import ActivationCollector

    names = [n.outputs[0].name for n in dense.graph.nodes if n.op == "LayerNormalization"]
    have = {t for n in model.graph.nodes for t in (o.name for o in n.outputs)}
    names = [x for x in names if x in have]
    ids, types = evaluate._minilm_tokens(texts)
    cc, cd = ActivationCollector(model, names), ActivationCollector(dense, names)
    sums = dict.fromkeys(names, 0.0)
    count = 0
    for x, t in zip(ids, types):
        feed = {"input_ids": x[None], "attention_mask": np.ones((1, x.size), np.int64), "token_type_ids": t[None]}
        feed = {k: v for k, v in feed.items() if k in cc.input_names}
        a, b = cc.run(feed), cd.run(feed)
        for nm in names:
            u, v = np.asarray(a[nm], np.float64).reshape(-1, a[nm].shape[-1]), np.asarray(b[nm], np.float64).reshape(-1, b[nm].shape[-1])
            cos = np.sum(u * v, 1) / np.maximum(np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1), 1e-12)
            sums[nm] += float(cos.sum())
        count += x.size
    return {nm.replace("/enc/encoder/", "").replace("/LayerNormalization_output_0", ""): round(s / count, 5)
            for nm, s in sums.items()}


def _ln_refit(model: Any, dense: Any, feeds: list[dict[str, np.ndarray]]) -> int:
    """Re-fit each LayerNormalization's scale/bias (per channel, least squares) so that its output
    matches the dense model's on `feeds`, one LN at a time in graph order; returns how many."""
    import onnx_graphsurgeon as gs

    from spa_compiler.calibration import ActivationCollector

    lns = [n for n in model.graph.nodes if n.op == "LayerNormalization"
           and all(isinstance(t, gs.Constant) for t in n.inputs[1:3])]
    with ActivationCollector(dense, [n.outputs[0].name for n in lns]) as dense_out:
        targets = [dense_out.run({k: v for k, v in f.items() if k in dense_out.input_names}) for f in feeds]
    for ln in lns:
        eps = float(ln.attrs.get("epsilon", 1e-5))
        sums = np.zeros((5, ln.inputs[1].values.size))
        with ActivationCollector(model, [ln.inputs[0].name], prune=True) as col:
            for f, t in zip(feeds, targets):
                x = col.run({k: v for k, v in f.items() if k in col.input_names})[ln.inputs[0].name]
                x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
                y = np.asarray(t[ln.outputs[0].name], np.float64).reshape(x.shape)
                xh = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + eps)
                sums += [xh.sum(0), y.sum(0), (xh * xh).sum(0), (xh * y).sum(0), np.full(x.shape[1], len(x))]
        sx, sy, sxx, sxy, n = sums
        gain = (sxy / n - sx * sy / n**2) / np.maximum(sxx / n - (sx / n) ** 2, 1e-12)
        dtype = ln.inputs[1].values.dtype
        ln.inputs[1].values = gain.astype(dtype)
        ln.inputs[2].values = (sy / n - gain * sx / n).astype(dtype)
    return len(lns)


#: hybrid variants: (whose removal order, whose Hessians re-fit the consumers; None: no re-fit),
#: between calibrated OBS ("obs") and data-free OBSPA ("obspa"), one-shot, at the plan's counts
HYBRIDS: dict[str, tuple[str, str | None]] = {
    "obs-norefit": ("obs", None), "obspa-norefit": ("obspa", None),
    "obspa-order-obs-refit": ("obspa", "obs"), "obs-order-obspa-refit": ("obs", "obspa"),
    "obspa-oneshot": ("obspa", "obspa"),
}


#: re-fit variants on OBSPA's order: (feeds the consumers' moments come from, their form): "full"
#: the second moment E[x x^T] (what OBS uses), "mean-diag" the per-column variances and the
#: means' outer product, diag(var) + mu mu^T (the columns' correlations other than through their
#: means dropped)
MOMENTS: dict[str, tuple[str, str]] = {
    "refit-synthetic-full": ("synthetic", "full"), "refit-synthetic-mean-diag": ("synthetic", "mean-diag"),
    "refit-calibration-full": ("calibration", "full"), "refit-calibration-mean-diag": ("calibration", "mean-diag"),
}


def _synthetic(dense: Any, shapes: dict[str, list[int]]) -> list[dict[str, np.ndarray]]:
    from spa_compiler.context import CompileContext
    from spa_compiler.passes.prune_to_budget import PruneToBudgetPass

    return PruneToBudgetPass(criterion="obspa")._synthetic(CompileContext(input_shapes=shapes), dense)


def _refit_moments(dense: Any, paths: dict[str, Any], feeds: list[dict[str, np.ndarray]],
                   form: str, damp: float = 0.01) -> dict[str, list[np.ndarray]]:
    """Per group, per consumer view, the prepared Hessian of its re-fit from `feeds`."""
    from spa_compiler.criteria.obs import prepare_hessian
    from spa_compiler.criteria.paths import collect_hessians

    flat = [(g, v) for g, p in paths.items() for v in p.views]
    accs = collect_hessians(dense, [v for _, v in flat], feeds, prune=True)
    out: dict[str, list[np.ndarray]] = {}
    for i, (g, _v) in enumerate(flat):
        a = accs[i]
        if form == "full":
            h = a.hessian(damp=damp)
        else:
            mu = a.mean()
            var = np.maximum(np.diag(a.second_moment()) - mu * mu, 0.0)
            h = 2.0 * (np.diag(var) + np.outer(mu, mu))
            h[np.diag_indices_from(h)] += damp * float(np.mean(np.diag(h)))
        out.setdefault(g, []).append(prepare_hessian(h))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quality.ablate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["minilm"], default="minilm")
    ap.add_argument("--report", required=True, help="a compile report of prune-to-budget (the plan)")
    ap.add_argument("--variants", default="layer-oneshot,layer-seq4,dense-1,dense-4,isolated")
    ap.add_argument("--n-test", type=int, default=300, help="held-out sentences (evaluation split)")
    ap.add_argument("--calib-n", type=int, default=1024, help="calibration sentences (minilm_calibration)")
    ap.add_argument("--criterion", choices=["obs", "obspa"], default="obs",
                    help="obs: units ranked and re-fitted on calibration; obspa: data-free (the model's "
                         "response to synthetic feeds), the same plan's counts")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from benchmarks.quality import evaluate
    from benchmarks.quality.table import MODELS
    from spa_compiler.context import CompileContext
    from spa_compiler.ir import ModelIR
    from spa_compiler.models_zoo import real
    from spa_compiler.ort import make_session
    from spa_compiler.passes.prune_to_budget import PruneToBudgetPass
    import onnx

    cfg = MODELS[args.model]
    rep = json.loads(pathlib.Path(args.report).read_text())
    rec = next(p for p in rep["passes"] if p["name"] == "prune-to-budget")
    kept = {d["group"]: int(d["kept"]) for d in rec.get("details", []) if "group" in d and "kept" in d}
    dense_path = real.export_real(cfg["real"], cfg["exporter"])
    dense = ModelIR.from_proto(onnx.load(str(dense_path)))
    shapes = {s.split(":")[0]: [int(v) for v in s.split(":")[1].split("x")] for s in cfg["shapes"]}
    calib = list(evaluate.minilm_calibration(args.calib_n))
    ctx = CompileContext(calibration=calib if args.criterion == "obs" else None, input_shapes=shapes)
    t0 = time.perf_counter()
    # paths to the deepest cut (without a budget they would stop at the default ratio's share, and
    # a plan beyond it would not apply)
    base = PruneToBudgetPass(criterion=args.criterion, round_to=1, ratio=PruneToBudgetPass.max_ratio)
    method = base.build_method(dense.clone(), ctx)
    method_s = time.perf_counter() - t0
    paths0 = dict(method.paths)
    texts = _held_out(args.n_test)
    dense_emb = evaluate.minilm_embeddings(make_session(dense, threads=2, optimize=True), texts)
    out: dict[str, Any] = {"command": "python -m benchmarks.quality.ablate " + " ".join(argv or sys.argv[1:]),
                           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                           "load_avg": os.getloadavg(), "criterion": args.criterion, "kept": kept, "n_test": len(texts),
                           "method_build_s": round(method_s, 1), "variants": {}}
    settings = {"layer-oneshot": dict(sequential=0, refit="layer"), "layer-seq4": dict(sequential=4, refit="layer"),
                "dense-1": dict(sequential=0, refit="dense", refit_stages=1),
                "dense-4": dict(sequential=0, refit="dense", refit_stages=4),
                "dense-4-seq4": dict(sequential=4, refit="dense", refit_stages=4),
                "residual": dict(sequential=0, refit="residual"), "layer-ln": dict(sequential=0, refit="layer")}
    other = None  # the data-free paths, for the hybrid variants
    if any(v in HYBRIDS or v in MOMENTS for v in args.variants.split(",")):
        if args.criterion != "obs":
            raise SystemExit("the hybrid variants compare against calibrated OBS: use --criterion obs")
        df = PruneToBudgetPass(criterion="obspa", round_to=1, ratio=PruneToBudgetPass.max_ratio)
        other = dict(df.build_method(dense.clone(), CompileContext(input_shapes=shapes)).paths)
    for v in args.variants.split(","):
        t = time.perf_counter()
        if v in MOMENTS or v in HYBRIDS:
            if v in MOMENTS:
                source, form = MOMENTS[v]
                hs = _refit_moments(dense, paths0, calib if source == "calibration" else _synthetic(dense, shapes),
                                    form)
                method.paths = {x: dataclasses.replace(other[x], fitted={}, views=paths0[x].views,
                                                       hessians=hs.get(x, [])) for x in paths0}
                order_of, refit = "obspa", f"{source} {form}"
            else:
                order_of, refit_of = HYBRIDS[v]
                src = {"obs": paths0, "obspa": other}
                method.paths = {x: dataclasses.replace(
                    src[order_of][x], fitted={},
                    views=src[refit_of][x].views if refit_of else [],
                    hessians=src[refit_of][x].hessians if refit_of else []) for x in paths0}
                refit = refit_of or "none"
            m = dense.clone()
            method.apply(m, kept)
            cos = _sentence_cos(m, dense_emb, texts)
            out["variants"][v] = {"cosine_to_dense": round(cos, 5), "error": round(1 - cos, 5),
                                  "order": order_of, "refit": refit, "seconds": round(time.perf_counter() - t, 1)}
            print(v, out["variants"][v], flush=True)
            continue
        if v == "isolated":
            iso = {}
            for g, k in kept.items():
                if k >= method.groups[g].n_units:
                    continue
                method.paths = {x: dataclasses.replace(p, fitted={}) for x, p in paths0.items()}
                m = dense.clone()
                method.apply(m, {g: k})
                iso[g] = round(1 - _sentence_cos(m, dense_emb, texts), 5)
            out["variants"][v] = {"by_group": iso, "sum": round(sum(iso.values()), 5),
                                  "seconds": round(time.perf_counter() - t, 1)}
            print(v, out["variants"][v], flush=True)
            continue
        method.paths = {x: dataclasses.replace(p, fitted={}) for x, p in paths0.items()}
        p = PruneToBudgetPass(criterion=args.criterion, round_to=1, **settings[v])
        m = dense.clone()
        stats = p._sequential(m, ctx, method, kept)
        method.apply(m, kept)
        if v == "layer-ln":
            stats["layer_norms_refitted"] = _ln_refit(m, dense, calib)
        cos = _sentence_cos(m, dense_emb, texts)
        out["variants"][v] = {"cosine_to_dense": round(cos, 5), "error": round(1 - cos, 5),
                              "checkpoints": _checkpoints(m, dense, texts[:100]),
                              "stats": {k: x for k, x in stats.items() if k != "refitted"},
                              "seconds": round(time.perf_counter() - t, 1)}
        print(v, {k: x for k, x in out["variants"][v].items() if k != "checkpoints"}, flush=True)
    path = pathlib.Path(args.out)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
