"""Fuzz: valid zoo models, mutated, through the CLI in a subprocess.

Each case takes a valid model (zoo models of both kinds: a CNN and a transformer encoder, and the
small conv chain of tests.helpers), applies one seeded mutation (a dimension, an attribute, a dtype,
a dropped initializer, truncated or flipped bytes), writes it, and runs `spa-compile` on it as a
user would. Whatever the mutation, the tool must:

* exit with 0, 1, 2 or 3, with a one-line message as stderr's last line on failure;
* never print "internal error" or a traceback;
* leave the input file's bytes unchanged;
* leave no temporary file (``.spa-tmp-*``) in the output folder, and a valid model when it exits 0.

Cases alternate compile, inspect, compile, inspect --groups. Fixed seed and a bounded count
(FUZZ_CASES: 32 cases, about 2 s of CPU each, ~65 s on an idle 2-core machine): under 2 minutes of CI. Run
more locally with ``SPA_FUZZ_CASES=200 SPA_FUZZ_SEED=7 pytest tests/core/test_fuzz.py``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.helpers import conv_chain_model

FUZZ_SEED = int(os.environ.get("SPA_FUZZ_SEED", "20261201"))
FUZZ_CASES = int(os.environ.get("SPA_FUZZ_CASES", "32"))

_DTYPES = [TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT8,
           TensorProto.BFLOAT16, TensorProto.BOOL, TensorProto.STRING, TensorProto.UINT8]


# ------------------------------------------------------------------------------ mutations
def _int_attrs(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.AttributeProto]]:
    out = []
    for n in model.graph.node:
        for a in n.attribute:
            if a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS, onnx.AttributeProto.FLOAT):
                out.append((n, a))
    return out


def m_input_dim(model: onnx.ModelProto, rng: np.random.Generator) -> str:
    real = [vi for vi in model.graph.input if vi.name not in {t.name for t in model.graph.initializer}]
    vi = real[rng.integers(len(real))]
    dims = vi.type.tensor_type.shape.dim
    if not dims:
        return "input without dims"
    k = int(rng.integers(len(dims)))
    choice = rng.integers(5)
    d = dims[k]
    d.Clear()
    if choice == 0:
        d.dim_value = 0
    elif choice == 1:
        d.dim_value = -1
    elif choice == 2:
        d.dim_param = "?"
    elif choice == 3:
        d.dim_value = int(rng.integers(2, 40))
    else:
        d.dim_param = f"sym{k}"
    return f"input {vi.name} dim {k} -> {d}".strip()


def m_weight_dims(model: onnx.ModelProto, rng: np.random.Generator) -> str:
    inits = [t for t in model.graph.initializer if len(t.dims) >= 1]
    t = inits[rng.integers(len(inits))]
    k = int(rng.integers(len(t.dims)))
    t.dims[k] = max(0, t.dims[k] + int(rng.choice([-1, 1, 3])))
    return f"initializer {t.name} dim {k} -> {t.dims[k]}"


def m_attribute(model: onnx.ModelProto, rng: np.random.Generator) -> str:
    attrs = _int_attrs(model)
    if not attrs:
        return "no attribute"
    node, a = attrs[rng.integers(len(attrs))]
    if a.type == onnx.AttributeProto.INT:
        a.i = int(rng.choice([-2, -1, 0, 2, 3, 7, 1 << 20]))
    elif a.type == onnx.AttributeProto.FLOAT:
        a.f = float(rng.choice([0.0, -1.0, np.nan, 1e30]))
    elif a.ints:
        k = int(rng.integers(len(a.ints)))
        a.ints[k] = int(rng.choice([-3, -1, 0, 2, 5]))
    else:
        a.ints.append(int(rng.integers(-2, 4)))
    return f"{node.op_type} {node.name} attribute {a.name}"


def m_dtype(model: onnx.ModelProto, rng: np.random.Generator) -> str:
    if rng.random() < 0.5 and model.graph.initializer:
        t = model.graph.initializer[rng.integers(len(model.graph.initializer))]
        t.data_type = int(rng.choice(_DTYPES))
        return f"initializer {t.name} data_type -> {t.data_type}"
    vis = list(model.graph.input) + list(model.graph.output)
    vi = vis[rng.integers(len(vis))]
    vi.type.tensor_type.elem_type = int(rng.choice(_DTYPES))
    return f"value {vi.name} elem_type -> {vi.type.tensor_type.elem_type}"


def m_drop_initializer(model: onnx.ModelProto, rng: np.random.Generator) -> str:
    k = int(rng.integers(len(model.graph.initializer)))
    name = model.graph.initializer[k].name
    del model.graph.initializer[k]
    return f"dropped initializer {name}"


def m_weight_values(model: onnx.ModelProto, rng: np.random.Generator) -> str:
    floats = [t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and t.raw_data]
    t = floats[rng.integers(len(floats))]
    arr = np.frombuffer(t.raw_data, dtype=np.float32).copy()
    arr[rng.integers(arr.size)] = rng.choice([np.nan, np.inf, -np.inf, 3e38])
    t.raw_data = arr.tobytes()
    return f"initializer {t.name} gets a non-finite value"


def m_rename_edge(model: onnx.ModelProto, rng: np.random.Generator) -> str:
    node = model.graph.node[rng.integers(len(model.graph.node))]
    if not node.input:
        return "node without inputs"
    k = int(rng.integers(len(node.input)))
    node.input[k] = rng.choice(["", "does_not_exist", node.output[0] if node.output else ""])
    return f"{node.op_type} {node.name} input {k} -> {node.input[k]!r}"


def m_opset(model: onnx.ModelProto, rng: np.random.Generator) -> str:
    imp = model.opset_import[0]
    imp.version = int(rng.choice([7, 10, 11, 13, 30]))
    return f"opset -> {imp.version}"


MUTATIONS: list[Callable[[onnx.ModelProto, np.random.Generator], str]] = [
    m_input_dim, m_weight_dims, m_attribute, m_dtype, m_drop_initializer, m_weight_values,
    m_rename_edge, m_opset,
]


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One mutation of a serialized model: a structural one (8 kinds) or a byte-level one."""
    kind = int(rng.integers(len(MUTATIONS) + 2))
    if kind == len(MUTATIONS):  # truncated
        cut = int(rng.integers(1, len(data)))
        return f"truncated at {cut} of {len(data)} bytes", data[:cut]
    if kind == len(MUTATIONS) + 1:  # a few flipped bytes
        arr = bytearray(data)
        for _ in range(int(rng.integers(1, 6))):
            arr[int(rng.integers(len(arr)))] ^= int(rng.integers(1, 256))
        return "flipped bytes", bytes(arr)
    model = onnx.ModelProto()
    model.ParseFromString(data)
    what = MUTATIONS[kind](model, rng)
    return what, model.SerializeToString()


# ------------------------------------------------------------------------------ seeds
def _seed_models(tmp: Path) -> dict[str, tuple[bytes, list[str]]]:
    """name -> (serialized valid model, shape hints for its symbolic inputs)."""
    seeds = {"chain": (conv_chain_model(np.random.default_rng(0)).SerializeToString(), [])}
    try:
        from spa_compiler import models_zoo

        for name in ("tiny_resnet", "tiny_bert"):
            path = models_zoo.build(name, "torchscript")
            hints = [f"{k}:{'x'.join(map(str, v))}" for k, v in models_zoo.default_shapes(name).items()]
            seeds[name] = (path.read_bytes(), hints)
    except Exception as e:  # torch missing: the conv chain alone still fuzzes every mutation
        print(f"zoo models unavailable ({type(e).__name__}: {e}); fuzzing the conv chain only")
    return seeds


def _cases() -> list[tuple[int, str]]:
    names = ["chain", "tiny_resnet", "tiny_bert"]  # 3 seeds x 4 verbs: every pairing recurs
    return [(i, names[i % len(names)]) for i in range(FUZZ_CASES)]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, list[str]]]:
    return _seed_models(tmp_path_factory.mktemp("seeds"))


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "spa_compiler", *argv], capture_output=True, text=True,
                          cwd=cwd, timeout=180, env=env)


def _check(r: subprocess.CompletedProcess[str], what: str) -> None:
    err = r.stderr
    assert r.returncode in (0, 1, 2, 3), (what, r.returncode, err[-2000:])
    assert "Traceback" not in err, (what, err[-3000:])
    assert "internal error" not in err, (what, err[-2000:])
    if r.returncode != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("spa-compile: error: "), (what, err[-2000:])


@pytest.mark.parametrize(("index", "seed_name"), _cases(), ids=[f"{i}-{n}" for i, n in _cases()])
def test_mutated_model_through_the_cli(
    index: int, seed_name: str, seeds: dict[str, tuple[bytes, list[str]]], tmp_path: Path
) -> None:
    if seed_name not in seeds:
        pytest.skip(f"{seed_name} needs torch (models_zoo)")
    data, hints = seeds[seed_name]
    rng = np.random.default_rng([FUZZ_SEED, index])
    what, mutated = mutate(data, rng)
    src = tmp_path / "in" / "model.onnx"
    src.parent.mkdir()
    src.write_bytes(mutated)
    digest = hashlib.sha256(mutated).hexdigest()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    shape_args = [a for h in hints for a in ("--input-shape", h)]
    what = f"case {index} on {seed_name}: {what}"

    out = out_dir / "small.onnx"
    verb = ("compile", "inspect", "compile", "inspect --groups")[index % 4]
    if verb == "compile":
        r = _run([str(src), "-o", str(out), "--report", str(out_dir / "report.json"), "--no-measure",
                  "--validate", "end", *shape_args], tmp_path)
    else:
        r = _run([*verb.split(), str(src), *shape_args], tmp_path)
    _check(r, f"{verb} {what}")

    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest, what
    leftovers = [p.name for p in out_dir.iterdir() if p.name.startswith(".spa-tmp-")]
    assert not leftovers, (what, leftovers)
    assert sorted(p.name for p in src.parent.iterdir()) == ["model.onnx"], what
    if r.returncode == 0 and verb == "compile":
        onnx.checker.check_model(str(out), full_check=True)
        assert (out_dir / "report.json").is_file()


def test_mutations_are_deterministic() -> None:
    data = conv_chain_model(np.random.default_rng(0)).SerializeToString()
    a = [mutate(data, np.random.default_rng([FUZZ_SEED, i])) for i in range(12)]
    b = [mutate(data, np.random.default_rng([FUZZ_SEED, i])) for i in range(12)]
    assert a == b
    assert len({w.split()[0] for w, _ in a}) > 3  # several kinds of mutation among 12 cases
