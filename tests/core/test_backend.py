"""The torch backend of the numerical core (spa_compiler.criteria.backend) equals the numpy one.

Run as ``SPA_COMPILER_DEVICE=torch-cpu``: the torch code on the CPU, so machines without a GPU
check it; on a GPU machine the same tests run with ``cuda`` too.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spa_compiler.criteria import backend  # noqa: E402
from spa_compiler.criteria.hessian import HessianAccumulator  # noqa: E402
from spa_compiler.criteria.obs import greedy_prune, joint_greedy_order, prepare_hessian  # noqa: E402

DEVICES = ["torch-cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _layer(rng: np.random.Generator, n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    w = rng.standard_normal((n_out, n_in))
    mix = np.eye(n_in) + 0.3 * rng.standard_normal((n_in, n_in)) / np.sqrt(n_in)
    x = mix @ rng.standard_normal((n_in, 2 * n_in))
    return w, prepare_hessian(2.0 * x @ x.T / x.shape[1], 0.01)


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(backend, "MIN_GPU_COLUMNS", 0)
    return request.param


def _with(monkeypatch: pytest.MonkeyPatch, choice: str, fn):  # type: ignore[no-untyped-def]
    monkeypatch.setenv(backend.ENV, choice)
    return fn()


@pytest.mark.parametrize("sizes", [(1,), (3,), (1, 9)])
def test_greedy_paths_equal_numpy(device: str, sizes: tuple[int, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(sum(sizes))
    n_groups = 70
    ws, hs, gs = [], [], []
    for i, s in enumerate(sizes):
        w, h = _layer(rng, 10 + 3 * i, n_groups * s + 1)
        ws.append(w)
        hs.append(h)
        gs.append([np.arange(g * s, (g + 1) * s) for g in range(n_groups)])
    run = lambda: joint_greedy_order(ws, hs, gs, 60)  # noqa: E731
    ref_order, ref_err = _with(monkeypatch, "cpu", run)
    order, err = _with(monkeypatch, device, run)
    assert order.tolist() == ref_order.tolist()
    np.testing.assert_allclose(err, ref_err, rtol=1e-8, atol=1e-12)
    if len(sizes) == 1:  # snapshots come back as numpy arrays of the same values
        one = lambda: greedy_prune(ws[0], hs[0], gs[0], levels=[0, 30, 60])  # noqa: E731
        a, b = _with(monkeypatch, "cpu", one), _with(monkeypatch, device, one)
        for lv in (30, 60):
            np.testing.assert_allclose(b.weight(lv), a.weight(lv), rtol=1e-8, atol=1e-10)


def test_hessian_accumulator_and_energy_equal_numpy(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    cpu, tor = HessianAccumulator(30), backend.TorchHessianAccumulator(30, dev)
    for m in (50, 7, 300):
        x = rng.standard_normal((m, 30)).astype(np.float32)
        cpu.add_batch(x)
        tor.add_batch(x)
    np.testing.assert_allclose(tor.hessian(0.01), cpu.hessian(0.01), rtol=1e-12)
    np.testing.assert_allclose(tor.mean(), cpu.mean(), rtol=1e-12)
    w, h = _layer(rng, 5, 30)
    e_ref = _with(monkeypatch, "cpu", lambda: backend.energy(w, h))
    assert _with(monkeypatch, device, lambda: backend.energy(w, h)) == pytest.approx(e_ref, rel=1e-12)


def test_device_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(backend.ENV, "cpu")
    assert backend.torch_device(10_000) is None
    monkeypatch.setenv(backend.ENV, "torch-cpu")
    assert backend.torch_device(10_000).type == "cpu"
    monkeypatch.setenv(backend.ENV, "bogus")  # unknown: auto
    assert backend.torch_device(1) is None or torch.cuda.is_available()


def test_solve_kept_equals_numpy(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kept-column re-fit (one Cholesky factor on the device) equals numpy's solve; a
    singular H_KK still falls back to the minimum-norm solution."""
    from spa_compiler.criteria.obs import solve_kept

    rng = np.random.default_rng(5)
    w, h = _layer(rng, 12, 40)
    keep = rng.permutation(40)[:27]
    ref = _with(monkeypatch, "cpu", lambda: solve_kept(w, h, keep))
    got = _with(monkeypatch, device, lambda: solve_kept(w, h, keep))
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-10)
    assert not got[:, np.setdiff1d(np.arange(40), keep)].any()
    x = rng.standard_normal((40, 5))  # rank 5 < 27 kept columns: not PD
    h_low = 2.0 * x @ x.T
    ref = _with(monkeypatch, "cpu", lambda: solve_kept(w, h_low, keep))
    got = _with(monkeypatch, device, lambda: solve_kept(w, h_low, keep))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-8)
