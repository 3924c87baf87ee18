"""On the GPU machine, before timing anything: the CUDA backend gives the numpy path's OBS order."""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def main() -> int:
    from spa_compiler.criteria import backend
    from spa_compiler.criteria.obs import joint_greedy_order, prepare_hessian

    rng = np.random.default_rng(0)
    ws, hs, gs = [], [], []
    for s, n_in in ((1, 600), (9, 9 * 70)):
        w = rng.standard_normal((64, n_in))
        x = rng.standard_normal((n_in, 2 * n_in))
        ws.append(w)
        hs.append(prepare_hessian(2 * x @ x.T / x.shape[1], 0.01))
        gs.append([np.arange(g * s, (g + 1) * s) for g in range(n_in // s)])
    out = {}
    for choice in ("cpu", "cuda"):
        os.environ[backend.ENV] = choice
        out[choice] = [joint_greedy_order([w], [h], [g], 50)[0].tolist() for w, h, g in zip(ws, hs, gs)]
    ok = out["cpu"] == out["cuda"]
    print(json.dumps({"cuda_equals_numpy": ok, "device": str(backend.torch_device(10_000))}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
