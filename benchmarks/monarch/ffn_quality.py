"""Real FFN layers: output error of Monarch (plain projection, and after ALS on calibration
inputs) against FFN-neuron pruning with a least-squares re-fit, at equal MAC fractions.

For the chosen layers of MiniLM-L6 (GELU FFN 384 -> 1536 -> 384) or SmolLM2-135M (SwiGLU 576 ->
1536 -> 576) the FFN inputs are captured (torch hooks) on calibration text (the harness's
calibration splits), half the tokens fit, half evaluate. Reported: the FFN block's relative squared
output error ||F(x) - F'(x)||^2 / ||F(x)||^2 on the held-out tokens, where F' has

    monarch-proj    every FFN matrix projected onto Monarch (Frobenius-optimal)
    monarch-als     the same, refined by ALS on each matrix's own inputs (`factor.refine`), the
                    down projection's inputs taken from the already-substituted up/gate
    prune-ls        a share of the FFN neurons kept (largest ||h_i|| * ||W_down[:, i]||, i.e.
                    Wanda's score), the down projection re-fitted by exact least squares on the kept
                    neurons (what OBS's compensation does for a whole-neuron removal)

at MAC fractions f (Monarch: r*(bo*K + bi*N)/(N*K) for every matrix; pruning: the kept share).

    python -m benchmarks.monarch.ffn_quality --model minilm --layers 0,3,5 \
        --out benchmarks/monarch/results/ffn-quality-minilm.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pathlib
from typing import Any

import numpy as np

from spa_compiler.monarch import factor as F


def _capture(model_name: str, layers: list[int], n_feeds: int) -> tuple[Any, dict[int, np.ndarray]]:
    import itertools

    import torch

    from benchmarks.quality import evaluate
    from spa_compiler.models_zoo import real

    net = real.load_torch("minilm-l6" if model_name == "minilm" else "smollm2-135m")
    if model_name == "minilm":
        blocks = net.enc.encoder.layer
        feeds = itertools.islice(evaluate.minilm_calibration(n_feeds), n_feeds)
        mods = {i: blocks[i].intermediate for i in layers}  # input: attention output (hidden)
    else:
        blocks = net.lm.model.layers
        feeds = itertools.islice(evaluate.smollm2_calibration(n_feeds), n_feeds)
        mods = {i: blocks[i].mlp for i in layers}
    got: dict[int, list[np.ndarray]] = {i: [] for i in layers}
    hooks = [m.register_forward_pre_hook(lambda mod, args, i=i: got[i].append(args[0].detach().reshape(-1, args[0].shape[-1]).numpy()))
             for i, m in mods.items()]
    with torch.no_grad():
        for f in feeds:
            net(**{k: torch.from_numpy(np.asarray(v)) for k, v in f.items()})
    for h in hooks:
        h.remove()
    return net, {i: np.concatenate(v).astype(np.float64) for i, v in got.items()}


def _ffn(model_name: str, net: Any, i: int) -> dict[str, np.ndarray]:
    if model_name == "minilm":
        b = net.enc.encoder.layer[i]
        return {"up": b.intermediate.dense.weight.detach().double().numpy(),
                "up_b": b.intermediate.dense.bias.detach().double().numpy(),
                "down": b.output.dense.weight.detach().double().numpy(),
                "down_b": b.output.dense.bias.detach().double().numpy()}
    m = net.lm.model.layers[i].mlp
    return {"gate": m.gate_proj.weight.detach().double().numpy(), "up": m.up_proj.weight.detach().double().numpy(),
            "down": m.down_proj.weight.detach().double().numpy()}


def _act(model_name: str, w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The FFN's hidden activation h (tokens, 1536) for weights `w` (M matrices, out x in)."""
    if model_name == "minilm":
        from scipy.special import erf

        a = x @ w["up"].T + w["up_b"]
        return 0.5 * a * (1 + erf(a / np.sqrt(2)))
    g, u = x @ w["gate"].T, x @ w["up"].T
    return g / (1 + np.exp(-g)) * u


def _out(model_name: str, w: dict[str, np.ndarray], h: np.ndarray) -> np.ndarray:
    return h @ w["down"].T + (w["down_b"] if model_name == "minilm" else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("minilm", "smollm2"), required=True)
    ap.add_argument("--layers", default="0,3,5")
    ap.add_argument("--feeds", type=int, default=16)
    ap.add_argument("--block", type=int, default=4, help="Monarch block count b (both factors)")
    ap.add_argument("--ranks", default="4,8,16,32")
    ap.add_argument("--als", type=int, default=6)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    layers = [int(v) for v in a.layers.split(",")]
    net, xs = _capture(a.model, layers, a.feeds)
    res: list[dict[str, Any]] = []
    for i in layers:
        x = xs[i]
        rng = np.random.default_rng(0)
        idx = rng.permutation(len(x))
        fit, test = x[idx[: len(x) // 2]], x[idx[len(x) // 2:]]
        w = _ffn(a.model, net, i)
        h_fit, h_test = _act(a.model, w, fit), _act(a.model, w, test)
        y_test = _out(a.model, w, h_test)
        energy = float((y_test**2).sum())
        mats = [m for m in ("gate", "up") if m in w]
        hx = fit.T @ fit / len(fit)
        for r in (int(v) for v in a.ranks.split(",")):
            for mode in ("monarch-proj", "monarch-als"):
                w2 = dict(w)
                frac = []
                for m in mats:
                    rf, lf = F.project(w[m], a.block, a.block, r)
                    if mode == "monarch-als":
                        rf, lf, _ = F.refine(w[m], hx, rf, lf, iters=a.als)
                    w2[m] = F.dense_weight(rf, lf)
                    frac.append(F.MonarchShape(*w[m].shape, a.block, a.block, r).fraction)
                # the down projection's inputs: the hidden activations of the substituted up/gate
                hh = _act(a.model, w2, fit)
                rf, lf = F.project(w["down"], a.block, a.block, r)
                if mode == "monarch-als":
                    # fit M_down h' ~ W_down h: ALS on H' = E[h' h'^T] with the target W_down h mapped
                    # through the least-squares W* = W_down E[h h'^T] E[h' h'^T]^-1 (same optimum)
                    hph = hh.T @ hh / len(hh)
                    cross = h_fit.T @ hh / len(hh)
                    wstar = np.linalg.solve(hph + 1e-6 * np.trace(hph) / len(hph) * np.eye(len(hph)), (w["down"] @ cross).T).T
                    rf, lf = F.project(wstar, a.block, a.block, r)
                    rf, lf, _ = F.refine(wstar, hph, rf, lf, iters=a.als)
                w2["down"] = F.dense_weight(rf, lf)
                frac.append(F.MonarchShape(*w["down"].shape, a.block, a.block, r).fraction)
                err = float(((_out(a.model, w2, _act(a.model, w2, test)) - y_test) ** 2).sum()) / energy
                res.append({"layer": i, "method": mode, "variant": f"b{a.block}r{r}", "mac_fraction": round(float(np.mean(frac)), 4),
                            "ffn_output_error": err})
                print(f"layer {i} {mode:13s} b{a.block}r{r:<3d} MACs {np.mean(frac):.3f}: error {err:.4f}", flush=True)
        score = np.linalg.norm(h_fit, axis=0) * np.linalg.norm(w["down"], axis=0)
        hh_full = h_fit.T @ h_fit
        for keep in (0.1, 0.2, 0.3, 0.5, 0.75):
            k = int(round(keep * len(score)))
            kept = np.sort(np.argsort(-score)[:k])
            w2 = dict(w)
            for m in mats:
                w2[m] = w[m][kept]
            if "up_b" in w:
                w2["up_b"] = w["up_b"][kept]
            # least squares: W' (out, k) minimizing ||W' h_kept - W h|| over the fit tokens
            hk = hh_full[np.ix_(kept, kept)]
            rhs = w["down"] @ hh_full[:, kept]
            w2["down"] = np.linalg.solve(hk + 1e-8 * np.trace(hk) / k * np.eye(k), rhs.T).T
            err = float(((_out(a.model, w2, _act(a.model, w2, test)) - y_test) ** 2).sum()) / energy
            res.append({"layer": i, "method": "prune-ls", "variant": f"keep {keep}", "mac_fraction": keep,
                        "ffn_output_error": err})
            print(f"layer {i} prune-ls      keep {keep:<4}   MACs {keep:.3f}: error {err:.4f}", flush=True)
    out = {"command": "python -m benchmarks.monarch.ffn_quality " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k != "out"),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "load_average": os.getloadavg(),
        "tokens": {str(i): int(len(xs[i])) for i in layers}, "rows": res}
    p = pathlib.Path(a.out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
