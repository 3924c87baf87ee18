"""Latency benchmark: dense vs compiled at several budgets, and uniform pruning at matching MACs.

For one model and one target it (1) measures a latency table in context once (`spa-compile
profile`), (2) compiles at each budget with that table and the measure-and-correct search, and
(3) prunes uniformly at a few ratios, the way common tools do. Every latency is a paired
measurement (dense and compiled timed in alternation). It reports, per budget, measured latency /
budget and how much of the MAC reduction became latency reduction, against uniform pruning
interpolated to the same MACs.

Every compile lowers for the target (`--lower auto`, see the README): each row reports its latency
against the model as given (`latency_ratio`) and against the lowered dense model
(`latency_ratio_to_lowered`, with `lowered_dense_ms`).

Models: a path to an .onnx file, or `smollm2-dims` / `minilm-dims` / `efficientnet-dims` (random
weights with the real models' dimensions, built with transformers / efficientnet-lite-pytorch and
exported with the TorchScript exporter: latency does not depend on weight values).

    python -m benchmarks.latency.run --model minilm-dims --target ort-cpu \
        --shape input_ids:8x128 --shape attention_mask:8x128 --shape token_type_ids:8x128 \
        --budgets 0.8,0.6 --out benchmarks/latency/results/minilm-cpu.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

CONFIGS = {
    "smollm2-dims": dict(
        kind="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=100000.0,
        max_position_embeddings=8192, tie_word_embeddings=True,
    ),
    "minilm-dims": dict(
        kind="bert", vocab_size=30522, hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
        num_attention_heads=12, max_position_embeddings=512, type_vocab_size=2,
    ),
}


def build_dims_model(name: str, out: Path) -> Path:
    """Export a random-weight model with the real model's dimensions (TorchScript exporter)."""
    import torch
    import transformers

    torch.manual_seed(0)
    if name == "efficientnet-dims":
        from efficientnet_lite_pytorch import EfficientNet

        cnn = EfficientNet.from_name("efficientnet-lite0").eval()
        out.parent.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            torch.onnx.export(cnn, (torch.randn(2, 3, 224, 224),), str(out), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        return out
    cfg = dict(CONFIGS[name])
    kind = cfg.pop("kind")
    if kind == "llama":
        config = transformers.LlamaConfig(**cfg, attn_implementation="eager", use_cache=False)
        lm = transformers.LlamaForCausalLM(config).eval()

        class Wrap(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lm = lm

            def forward(self, input_ids, attention_mask, position_ids):  # type: ignore[no-untyped-def]
                return self.lm(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids, use_cache=False).logits

        names = ["input_ids", "attention_mask", "position_ids"]
        args = (torch.randint(0, 1000, (2, 16)), torch.ones(2, 16, dtype=torch.int64),
                torch.arange(16).repeat(2, 1))
        output = "logits"
    else:
        config = transformers.BertConfig(**cfg, attn_implementation="eager")
        enc = transformers.BertModel(config, add_pooling_layer=False).eval()

        class Wrap(torch.nn.Module):  # type: ignore[no-redef]
            def __init__(self) -> None:
                super().__init__()
                self.enc = enc

            def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
                return self.enc(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state

        names = ["input_ids", "attention_mask", "token_type_ids"]
        args = (torch.randint(0, 1000, (2, 16)), torch.ones(2, 16, dtype=torch.int64),
                torch.zeros(2, 16, dtype=torch.int64))
        output = "last_hidden_state"
    axes = {n: {0: "batch", 1: "seq"} for n in [*names, output]}
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(Wrap().eval(), args, str(out), dynamo=False, opset_version=17, input_names=names,
                          output_names=[output], dynamic_axes=axes, do_constant_folding=True)
    import onnx

    m = onnx.load(str(out))
    m.ir_version = min(m.ir_version, 10)
    onnx.save_model(m, str(out), save_as_external_data=m.ByteSize() > 1_500_000_000)
    return out


def _interp_uniform(uniform: list[dict[str, float]], mac_ratio: float) -> float | None:
    pts = sorted((u["mac_ratio"], u["latency_ratio"]) for u in uniform)
    pts = [(1.0, 1.0), *pts] if all(p[0] < 1.0 for p in pts) else pts
    pts.sort()
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if not xs[0] <= mac_ratio <= xs[-1]:
        return None
    return float(np.interp(mac_ratio, xs, ys))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--target", default="ort-cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--shape", action="append", default=[])
    ap.add_argument("--budgets", default="0.8,0.6,0.4")
    ap.add_argument("--uniform", default="0.25,0.5,0.75", help="uniform ratios (FFN/heads/channels)")
    ap.add_argument("--criterion", default="magnitude")
    ap.add_argument("--levels", type=int, default=6)
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-error", type=float, default=None,
                    help="search error bound (random-weight models: pass a large value, errors mean nothing)")
    ap.add_argument("--workdir", default="/tmp/spa-bench")
    ap.add_argument("--uniform-search", action="store_true",
                    help="also meet each budget with one shared share per group (uniform pruning searched "
                         "to the same latency budget)")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the workdir's exported model and latency table from an earlier call with the same "
                         "model, target and shapes (split one benchmark over several device calls)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    from spa_compiler import __version__
    from spa_compiler.compile import compile_model, parse_budget, parse_input_shapes
    from spa_compiler.groups.analysis import analyze
    from spa_compiler.ir import ModelIR
    from spa_compiler.latency.profile import profile_pruning
    from spa_compiler.ort import random_feeds
    from spa_compiler.report import Report
    from spa_compiler.targets import make_provider

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    shapes = parse_input_shapes(args.shape)
    t0 = time.time()
    dims = (*CONFIGS, "efficientnet-dims")
    if args.model in dims:
        src = work / f"{args.model}.onnx"
        if not (args.reuse and src.exists()):
            build_dims_model(args.model, src)
    else:
        src = Path(args.model)
    export_s = time.time() - t0
    model = ModelIR.load(src)
    units = ("channel", "head", "neuron")
    t0 = time.time()
    analysis = analyze(model, units=units, input_shapes=shapes)
    provider = make_provider(args.target, precision=args.precision, threads=args.threads, runs=args.runs,
                             input_shapes=shapes)
    table_path = work / f"table-{args.model.replace('/', '_')}-{args.target}-{args.precision}.json"
    if args.reuse and table_path.exists():
        from spa_compiler.latency.table import LatencyTable

        table = LatencyTable.load(table_path)
    else:
        table = profile_pruning(model, args.target, provider, random_feeds(model, shapes), units=units,
                                input_shapes=shapes, round_to=args.round_to, levels=args.levels, analysis=analysis)
        table.save(table_path)
    profile_s = time.time() - t0
    pipe = f"cleanup,prune-to-budget{{criterion={args.criterion},round-to={args.round_to},levels={args.levels}}},cleanup"

    def one(pipeline: str, budget: str | None, tag: str) -> dict[str, Any]:
        rep = Report()
        t = time.time()
        compile_model(src, work / f"{tag}.onnx", pipeline=pipeline, target=args.target, precision=args.precision,
                      budget=parse_budget(budget) if budget else None, input_shapes=shapes, report=rep,
                      latency_table=table if budget else None, measure_runs=args.runs, threads=args.threads,
                      validate="end", max_error=args.max_error)
        p = rep.after["paired"]
        return {
            "tag": tag, "budget": budget, "seconds": round(time.time() - t, 1),
            "dense_ms": p["dense_ms"], "compiled_ms": p["compiled_ms"], "latency_ratio": p["ratio"],
            # the lowered dense model (fused runtime ops, same precision) is the second baseline
            "lowered_dense_ms": p.get("lowered_dense_ms"), "latency_ratio_to_lowered": p.get("ratio_to_lowered"),
            "lowering": rep.lowering.get("describe"),
            "mac_ratio": rep.after["macs"] / rep.before["macs"] if rep.before.get("macs") else None,
            "param_ratio": rep.after["params"] / rep.before["params"],
            "budget_met": rep.budget.get("met"), "kind": p["kind"],
            "search": next((r.stats for r in rep.passes if r.name.startswith("prune-")), {}),
        }

    results: list[dict[str, Any]] = []
    uniform: list[dict[str, Any]] = []

    def summarize() -> dict[str, Any]:
        for r in results:
            frac = float(r["budget"].rstrip("x"))
            r["measured_over_budget"] = r["latency_ratio"] / frac
            if r["mac_ratio"] is not None and r["mac_ratio"] < 1:
                r["conversion"] = (1 - r["latency_ratio"]) / (1 - r["mac_ratio"])
                u = _interp_uniform([x for x in uniform if x["mac_ratio"] is not None], r["mac_ratio"])
                r["uniform_latency_ratio_at_same_macs"] = u
                r["uniform_conversion"] = None if u is None else (1 - u) / (1 - r["mac_ratio"])
        for u in uniform:
            if u["mac_ratio"] is not None and u["mac_ratio"] < 1:
                u["conversion"] = (1 - u["latency_ratio"]) / (1 - u["mac_ratio"])
        out = {
            "command": " ".join(["python -m benchmarks.latency.run", *(argv or sys.argv[1:])]),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "tool_version": __version__, "host": platform.node(), "target": args.target,
            "precision": args.precision, "model": args.model, "shapes": {k: list(v) for k, v in shapes.items()},
            "provenance": table.provenance.__dict__ | {"table_kind": table.kind},
            "export_seconds": round(export_s, 1), "profile_seconds": round(profile_s, 1),
            "groups": len(analysis.prunable), "budgets": results, "uniform": uniform,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1, default=str) + "\n")  # after every run
        return out

    for b in [b for b in args.budgets.split(",") if b]:
        results.append(one(pipe, f"{b}x", f"budget{b}"))
        summarize()
        if args.uniform_search:
            uniform_pipe = f"cleanup,prune-uniform{{criterion={args.criterion},round-to={args.round_to}}},cleanup"
            results.append(one(uniform_pipe, f"{b}x", f"uniform-budget{b}"))
            summarize()
    for r in [r for r in args.uniform.split(",") if r]:
        uniform.append(one(f"cleanup,prune-to-budget{{criterion=magnitude,ratio={r},round-to={args.round_to}}},cleanup",
                           None, f"uniform{r}"))
        summarize()
    print(f"{'run':>12} {'lat x':>7} {'x lowered':>9} {'MACs x':>7} {'meas/bud':>8} {'conv':>6} {'unif conv':>9}")
    for r in [*results, *uniform]:
        mac = r.get("mac_ratio") or float("nan")
        low = r.get("latency_ratio_to_lowered") or float("nan")
        print(f"{r['tag']:>12} {r['latency_ratio']:7.3f} {low:9.3f} {mac:7.3f} "
              f"{r.get('measured_over_budget', float('nan')):8.3f}"
              f" {r.get('conversion') or float('nan'):6.2f} {r.get('uniform_conversion') or float('nan'):9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
