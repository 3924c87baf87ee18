"""Lowering on the H200 (ONNX Runtime CUDA, fp16): as given vs lowered dense vs pruned + lowered.

Builds each model ON the GPU machine (random weights, real dimensions: transformers configs, or
torchvision), then, per model:

1. `spa_compiler.lowering.choose` (mode auto, fp16, the CUDA provider): every family checked
   numerically (fp32 on CPU, fp16 on the GPU) and timed; the decision as the compiler takes it.
2. Pruned variants (structural, physically removed with `groups.prune_groups`: FFN neurons, heads
   and conv channels at uniform shares, plus one with a different head count per layer), each timed
   in one alternation with the model as given and the lowered dense model: plain fp16 and lowered.
3. Budgets 0.8x/0.6x/0.4x of the model as given and 0.8x of the lowered dense model: the least
   pruned measured variant that meets each, with measured/budget and the shares of the saving
   that lowering and pruning gave. The variants are uniform shares, not the compiler's per-group
   search (which does not fit this run's device time): a budget met here is met by that search's
   uniform fallback at least.

    python -m benchmarks.lowering.h200 --models minilm,smollm2,resnet50,efficientnet --out $OUT/h200.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path
from typing import Any

MODELS = {
    "minilm": dict(dims="minilm-dims", shapes={"input_ids": (64, 128), "attention_mask": (64, 128),
                                               "token_type_ids": (64, 128)},
                   check={"input_ids": (2, 128), "attention_mask": (2, 128), "token_type_ids": (2, 128)},
                   units=("head", "neuron")),
    "smollm2": dict(dims="smollm2-dims", shapes={"input_ids": (8, 512), "attention_mask": (8, 512),
                                                 "position_ids": (8, 512)},
                    check={"input_ids": (2, 64), "attention_mask": (2, 64), "position_ids": (2, 64)},
                    units=("head", "neuron")),
    # ORT CPU, 1 thread (ALGORITHMS.md §7 measured BERT-style encoders at 4 x 128 there)
    "minilm-cpu": dict(dims="minilm-dims", shapes={"input_ids": (4, 128), "attention_mask": (4, 128),
                                                   "token_type_ids": (4, 128)},
                       check={"input_ids": (2, 128), "attention_mask": (2, 128), "token_type_ids": (2, 128)},
                       units=("head", "neuron")),
    "resnet50": dict(tv="resnet50", shapes={"input": (64, 3, 224, 224)}, check={"input": (2, 3, 224, 224)},
                     units=("channel",)),
    "efficientnet": dict(tv="efficientnet_b0", shapes={"input": (64, 3, 224, 224)},
                         check={"input": (2, 3, 224, 224)}, units=("channel",)),
}

#: (label, share of FFN neurons / channels removed, share of heads removed)
VARIANTS = [("ffn50", 0.5, 0.0), ("heads25", 0.0, 0.25), ("ffn50+heads25", 0.5, 0.25),
            ("ffn75+heads50", 0.75, 0.5)]
CNN_VARIANTS = [("ch25", 0.25, 0.0), ("ch50", 0.5, 0.0)]


def build_tv(name: str, out: Path) -> Path:
    import torch
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None).eval()
    with torch.no_grad():
        torch.onnx.export(net, (torch.randn(2, 3, 224, 224),), str(out), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    import onnx

    m = onnx.load(str(out))
    m.ir_version = min(m.ir_version, 10)
    onnx.save(m, str(out))
    return out


def plan_for(analysis: Any, ffn: float, heads: float, per_layer: bool = False) -> dict[str, list[int]]:
    plan: dict[str, list[int]] = {}
    head_groups = [g for g in analysis.prunable if g.unit == "head"]
    for g in analysis.prunable:
        if g.unit == "head":
            if per_layer:
                k = head_groups.index(g) % 3  # 0, 1, 2 heads (x kv groups) removed, by layer
                r = min(g.n_units - 1, k * max(1, g.n_units // 6))
            else:
                r = int(round(g.n_units * heads))
        elif g.unit in ("neuron", "channel"):
            r = int(round(g.n_units * ffn))
            r -= r % 8 if g.n_units - r > 8 else 0
            r = min(r, g.n_units - 8) if g.n_units > 8 else 0
        else:
            continue
        if r > 0:
            plan[g.id] = list(range(g.n_units - r, g.n_units))
    return plan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="minilm,smollm2,resnet50,efficientnet")
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/spa-lower")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--variants", default="", help="comma list of variant labels (default all)")
    ap.add_argument("--quick", default="",
                    help="families (a+b) to apply without the measured choice (large models: ORT's fusion "
                         "script takes minutes on 30 layers); timed against the model as given, checked in fp32")
    ap.add_argument("--cpu", action="store_true", help="smoke test on ORT CPU fp32 (zoo:NAME models too)")
    args = ap.parse_args(argv)

    from spa_compiler.groups.analysis import analyze, prune_groups
    from spa_compiler.ir import ModelIR
    from spa_compiler.latency.ort_cuda import OrtCudaProvider
    from spa_compiler.lowering import Lowering, choose, lower
    from spa_compiler.ort import random_feeds

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.cpu:
        from spa_compiler.latency.ort_cpu import OrtCpuProvider

        inner = OrtCpuProvider(threads=1, runs=args.runs)
    else:
        inner = OrtCudaProvider(fp16=False, runs=args.runs)
    target, precision = ("ort-cpu", "fp32") if args.cpu else ("ort-cuda", "fp16")
    out: dict[str, Any] = {"command": " ".join(["python -m benchmarks.lowering.h200", *(argv or sys.argv[1:])]),
                           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                           # the provider times models as given to it: the lowering makes them fp16
                           "provenance": {**inner.provenance(), "precision": precision}, "models": {}}

    def save() -> None:
        Path(args.out).write_text(json.dumps(out, indent=1, default=str) + "\n")

    plain = Lowering(precision=precision)
    for name in [m for m in args.models.split(",") if m]:
        if name.startswith("zoo:"):
            from spa_compiler import models_zoo

            zs = models_zoo.DEFAULT_SHAPES[name[4:]]
            spec = {"zoo": name[4:], "shapes": zs, "check": zs,
                    "units": ("channel",) if "pixel_values" in zs else ("head", "neuron")}
        else:
            spec = MODELS[name]
        rec: dict[str, Any] = {"shapes": {k: list(v) for k, v in spec["shapes"].items()}}
        out["models"][name] = rec
        t0 = time.time()
        try:
            src = work / f"{name}.onnx"
            if "dims" in spec:
                from benchmarks.latency.run import build_dims_model

                build_dims_model(spec["dims"], src)
            elif "zoo" in spec:
                from spa_compiler import models_zoo

                src = models_zoo.build(spec["zoo"], "torchscript")
            else:
                build_tv(spec["tv"], src)
            model = ModelIR.load(src, check=False)
            shapes = {k: v for k, v in spec["shapes"].items() if k in {t.name for t in model.graph.inputs}}
            check_shapes = {k: v for k, v in spec["check"].items() if k in shapes}
            feeds = random_feeds(model, shapes, seed=0)
            proto = model.to_proto()
            rec["export_s"] = round(time.time() - t0, 1)
            t0 = time.time()
            if args.quick:
                from spa_compiler.lowering.select import Decision, check

                chosen = Lowering(families=tuple(args.quick.split("+")), precision=precision)
                res = lower(proto, Lowering(families=chosen.families), check_shapes)
                ck = check(res.model, proto, [random_feeds(model, check_shapes, seed=1)], precision="fp32",
                           device="cpu")
                decision = Decision("quick", chosen if ck.ok else Lowering(precision=precision),
                                    tried=[{"family": args.quick, "fused": res.fused, "check_fp32": ck.to_json()}],
                                    notes=["--quick: families applied without the measured choice"])
                del res
            else:
                decision = None
            # patterns and head counts do not depend on batch or sequence: analyse at the check size
            if decision is None:
                decision = choose(proto, target=target, precision=precision, fp16_io=False, mode="auto",
                                  input_shapes=check_shapes, feeds=feeds, provider=inner, check_shapes=check_shapes)
            rec["decision"] = decision.to_json()
            rec["decision_s"] = round(time.time() - t0, 1)
            chosen = decision.lowering
            # every family that passed the check, too (auto may keep fewer)
            passing = [e["family"] for e in decision.tried
                       if e.get("applicable") and e.get("why") != "dropped: failed the numerical check"]
            given = lower(proto, plain, check_shapes).model
            low = lower(proto, chosen, check_shapes).model
            if args.quick:
                t_given, t_low = inner.time_many([given, low], feeds)
                decision.timings["paired_dense_ms"] = {"as_given": t_given.ms, "lowered": t_low.ms,
                                                       "ratio": t_low.ms / t_given.ms}
                rec["decision"] = decision.to_json()
            save()
            t0 = time.time()
            analysis = analyze(model, units=spec["units"], input_shapes=check_shapes)
            variants = CNN_VARIANTS if spec["units"] == ("channel",) else VARIANTS + [("heads-per-layer", 0.0, 0.0)]
            if args.variants:
                variants = [v for v in variants if v[0] in args.variants.split(",")]
            rec["variants"] = []
            for label, ffn, heads in variants:
                clone = model.clone()
                plan = plan_for(analysis, ffn, heads, per_layer=label == "heads-per-layer")
                if not plan:
                    continue
                prune_groups(clone, plan, analysis=analysis.for_clone(clone), validate=False)
                cp = clone.to_proto()
                res = lower(cp, chosen, check_shapes)
                heads_seen = sorted({int(a.i) for n in res.model.graph.node if n.op_type in ("Attention", "MultiHeadAttention")
                                     for a in n.attribute if a.name == "num_heads"})
                ms = [t.ms for t in inner.time_many([given, low, lower(cp, plain, check_shapes).model, res.model], feeds)]
                macs_note = {g: len(v) for g, v in plan.items()}
                rec["variants"].append({
                    "label": label, "ffn_share": ffn, "heads_share": heads, "units_removed": sum(macs_note.values()),
                    "given_ms": ms[0], "lowered_dense_ms": ms[1], "pruned_plain_ms": ms[2], "pruned_lowered_ms": ms[3],
                    "ratio_given": ms[3] / ms[0], "ratio_lowered": ms[3] / ms[1], "lowering_ratio": ms[1] / ms[0],
                    "fused": res.fused, "num_heads_in_fused_nodes": heads_seen})
                del clone, cp, res
                save()
            rec["variants_s"] = round(time.time() - t0, 1)
            rec["budgets"] = budgets(rec)
            rec["passing_families"] = passing
        except Exception as e:  # one model failing must not lose the others
            import traceback

            rec["error"] = f"{type(e).__name__}: {e}"
            rec["traceback"] = traceback.format_exc()[-3000:]
        save()
    save()
    return 0


def budgets(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """Per budget, the least-pruned measured point (dense lowered first) that meets it."""
    vs = rec.get("variants", [])
    if not vs:
        return []
    rows = []
    for frac, ref in ((0.8, "given"), (0.6, "given"), (0.4, "given"), (0.8, "lowered")):
        pts = [("dense (lowering only)", v["lowering_ratio"], 1.0, v) for v in vs[:1]]
        pts += [(v["label"], v["ratio_given"], v["ratio_lowered"], v) for v in vs]
        chosen = None
        for label, rg, rl, v in pts:
            r = rg if ref == "given" else (rl if label != "dense (lowering only)" else 1.0)
            if r <= frac:
                chosen = (label, rg, rl, r, v)
                break
        row: dict[str, Any] = {"budget": f"{frac}x of {'the model as given' if ref == 'given' else 'the lowered dense'}"}
        if chosen is None:
            best = min(pts, key=lambda p: p[1])
            row.update(met=False, fastest=best[0], fastest_ratio_given=round(best[1], 4))
        else:
            label, rg, rl, r, v = chosen
            low = v["lowering_ratio"]
            saved = 1.0 - rg
            row.update(met=True, point=label, measured_over_budget=round(r / frac, 4), ratio_given=round(rg, 4),
                       lowering_share=round((1.0 - low) / saved, 3) if saved > 0 else None,
                       pruning_share=round((low - rg) / saved, 3) if saved > 0 else None,
                       structural_change=label != "dense (lowering only)")
        rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
