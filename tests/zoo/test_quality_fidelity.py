"""The quality harness's fidelity figures for language models, on a zoo model (fast; no real data):
KL and top-1 agreement of next-token logits against the dense model, run alongside."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import numpy_helper

from benchmarks.quality import evaluate as ev
from spa_compiler import fidelity, models_zoo
from spa_compiler.ort import run


def _perturbed(src: str, dst: pathlib.Path, scale: float) -> str:
    m = onnx.load(src)
    big = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)) if len(t.dims) == 2 else 0)
    arr = numpy_helper.to_array(big)
    rng = np.random.default_rng(0)
    big.CopyFrom(numpy_helper.from_array((arr + scale * arr.std() * rng.standard_normal(arr.shape)).astype(arr.dtype),
                                         big.name))
    onnx.save(m, str(dst))
    return str(dst)


def test_window_fidelity_against_the_dense_model(tmp_path: pathlib.Path) -> None:
    dense = str(models_zoo.build("tiny_llama", "torchscript"))
    wins = np.random.default_rng(1).integers(0, 256, size=(3, 16)).astype(np.int64)
    nll, names, _, fid = ev._window_nll(dense, wins, 1, 1, dense)
    assert names == ["input_ids"] and fid is not None
    np.testing.assert_allclose(fid["dense_nll_sum"], nll, rtol=1e-6)
    np.testing.assert_allclose(fid["kl_sum"], 0.0, atol=1e-6)
    assert (fid["top1_agree"] == 15).all()  # every one of the seq - 1 positions
    small, bad = _perturbed(dense, tmp_path / "small.onnx", 0.05), _perturbed(dense, tmp_path / "bad.onnx", 1.0)
    _, _, _, f_small = ev._window_nll(small, wins, 1, 1, dense)
    _, _, _, f_bad = ev._window_nll(bad, wins, 1, 1, dense)
    assert f_small is not None and f_bad is not None
    assert 0 < f_small["kl_sum"].sum() < f_bad["kl_sum"].sum()
    assert f_bad["top1_agree"].sum() <= f_small["top1_agree"].sum()
    # the harness's KL is fidelity.kl_rows over the scored positions
    (ld,), (lb,) = run(dense, {"input_ids": wins[:1]}), run(bad, {"input_ids": wins[:1]})
    want = fidelity.kl_rows(ld[0, :-1], lb[0, :-1]).sum()
    np.testing.assert_allclose(f_bad["kl_sum"][0], want, rtol=1e-4)
