"""Quality of dense and compressed real models, measured on their ONNX files (ONNX Runtime, CPU).

The harness of issue 5. Every metric runs the ONNX file exactly as the compiler wrote it (external
data included), on ``threads`` CPU threads, so it measures what is shipped. A compressed model has
the dense model's inputs and outputs (only internal widths shrink), so one function serves both.

Models, metrics and data (shared/DATA.md; loaders in ``spa_compiler.models_zoo.data``):

``smollm2_perplexity``
    SmolLM2-135M token-level perplexity on non-overlapping ``seq``-token windows taken from the
    start of one Jane Austen novel (default Pride and Prejudice), tokenized with the model's own
    tokenizer without special tokens. Each window scores its ``seq - 1`` next-token predictions;
    perplexity = exp(mean NLL over all scored tokens). Calibration (`smollm2_calibration`) uses
    the OTHER five novels, so calibration and evaluation text never overlap.
``minilm_probe``
    all-MiniLM-L6-v2 sentence embeddings (attention-mask weighted mean of ``last_hidden_state``)
    of the 10,605 rated movie snippets; a logistic regression (label = rating > 0) is trained on
    the train split and scored on the test split. With ``dense_path``: mean cosine similarity
    between the model's and the dense model's embeddings of the test sentences. Calibration
    (`minilm_calibration`) takes sentences of the train split only.
``efficientnet_quality``
    EfficientNet-Lite0 on Fashion-MNIST images (28x28 grey, bilinear-resized to 224x224,
    replicated to 3 channels, scaled to [-1, 1]). (a) Linear probe: logistic regression on frozen
    features, trained on ``n_train`` images of the Fashion-MNIST train split and scored on ``n``
    images of the test split. The features are the model's penultimate activations (the input of
    the final classifier Gemm, found in the graph and exposed as an extra output), or the logits
    when the graph has no such layer (the result says which). (b) With ``dense_path``: top-1 (and
    top-5) agreement of the 1000-class ImageNet predictions with the dense model's on the ``n``
    test images. Fashion-MNIST is used instead of ImageNet because no ImageNet images install
    here; it is deterministic, real and out-of-distribution for the ImageNet head, which makes
    agreement a strict (low-margin) test. Calibration (`efficientnet_calibration`) takes
    train-split images disjoint from the probe's.

Splits are fixed permutations (seed 0), so every run and every model sees the same examples. Outputs
of the dense reference model are cached (``<cache>/quality/``, keyed by the ONNX file's content and
the evaluation parameters), so comparing many compressed models against one dense model runs the
dense model once.

Calibration data for ``spa-compile --calib``: either a folder of ``.npz`` feeds written by
`write_calibration_dir` (``python -m benchmarks.quality.run --model smollm2 --write-calib DIR``) or
the function spec ``benchmarks/quality/evaluate.py:smollm2_calibration`` (a file path, so it works
from the console script, whose sys.path lacks the repository; every ``*_calibration`` function works
with no arguments). Feeds carry every input the model family may have
(``input_ids``, ``attention_mask``, ``position_ids`` / ``token_type_ids``); the compiler drops keys
that are not inputs of the model at hand.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pathlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "CALIB_BOOKS",
    "EVAL_BOOK",
    "efficientnet_calibration",
    "efficientnet_quality",
    "fashion_images",
    "minilm_calibration",
    "minilm_calibration_256",
    "minilm_calibration_2048",
    "minilm_embeddings",
    "minilm_probe",
    "movie_split",
    "penultimate_tensor",
    "smollm2_calibration",
    "smollm2_calibration_256",
    "smollm2_perplexity",
    "write_calibration_dir",
]

EVAL_BOOK = "prideprejudice"
#: The novels calibration text comes from (every novel but the evaluation book).
CALIB_BOOKS = ("emma", "mansfieldpark", "sensesensibility", "northangerabbey", "persuasion")
SPLIT_SEED = 0
MINILM_MAX_LENGTH = 128  # the snippets are short: 99.9% fit; longer ones are truncated
IMAGE_SIZE = 224
#: Fashion-MNIST train images [0, FASHION_PROBE_POOL) of the permutation may train the probe;
#: calibration images come from the rest, so the two never overlap.
FASHION_PROBE_POOL = 30000

Feed = dict[str, np.ndarray]


# ----------------------------------------------------------------------------- ONNX Runtime
def make_session(
    onnx_path: str | os.PathLike[str],
    *,
    threads: int = 2,
    extra_outputs: Sequence[str] = (),
    custom_op_libraries: Sequence[str] = (),
) -> Any:
    """An ONNX Runtime CPU session on the model FILE (external data is read beside it).

    ``extra_outputs`` names intermediate tensors to expose as additional graph outputs (the model is
    then passed to ONNX Runtime as bytes, its external data read from the model's folder). Custom-op
    libraries (``custom_op_libraries`` or ``$SPA_ORT_CUSTOM_OPS``, ``os.pathsep``-separated) are
    registered first, for compressed models that use the project's runtime ops.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    libs = list(custom_op_libraries)
    env = os.environ.get("SPA_ORT_CUSTOM_OPS")
    if env:
        libs += [p for p in env.split(os.pathsep) if p]
    for lib in libs:
        so.register_custom_ops_library(lib)
    path = pathlib.Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} not found")
    if not extra_outputs:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    # the graph with extra outputs is handed over as bytes; its external data is read from the
    # model's own folder (a copy elsewhere would fail ORT's "path escapes model directory" check)
    so.add_session_config_entry(
        "session.model_external_initializers_file_folder_path", str(path.resolve().parent)
    )
    return ort.InferenceSession(
        _with_outputs(path, extra_outputs), so, providers=["CPUExecutionProvider"]
    )


def _with_outputs(path: pathlib.Path, names: Sequence[str]) -> bytes:
    """The serialized graph file with `names` added to its outputs (external data not loaded)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    present = {o.name for o in m.graph.output}
    for name in names:
        if name not in present:
            vi = m.graph.output.add()
            vi.name = name
            vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return m.SerializeToString()  # type: ignore[no-any-return]


def _input_names(session: Any) -> list[str]:
    return [i.name for i in session.get_inputs()]


def _text_feed(names: Sequence[str], ids: np.ndarray, mask: np.ndarray | None = None) -> Feed:
    """Feeds for a text model from token ids [B, S] (and an attention mask [B, S])."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    mask = np.ones_like(ids) if mask is None else np.ascontiguousarray(mask, dtype=np.int64)
    values = {
        "input_ids": ids,
        "attention_mask": mask,
        # positions count real tokens only (right padding: identical to arange on real tokens)
        "position_ids": np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64),
        "token_type_ids": np.zeros_like(ids),
    }
    unknown = [n for n in names if n not in values]
    if unknown:
        raise ValueError(f"the model has inputs {unknown} that a text model is not known to take")
    return {n: values[n] for n in names}


def _external_files(path: str | os.PathLike[str]) -> list[pathlib.Path]:
    """The external-data files a model's initializers reference (relative to its folder)."""
    import onnx

    p = pathlib.Path(path)
    m = onnx.load(str(p), load_external_data=False)
    locs = {
        e.value
        for t in m.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }
    return [p.parent / loc for loc in sorted(locs)]


def _model_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Resolved path, total bytes (with external data) and sha256 of the graph file."""
    p = pathlib.Path(path)
    extra = sum(q.stat().st_size for q in _external_files(p) if q.exists())
    return {
        "path": str(p.resolve()),
        "bytes": p.stat().st_size + extra,
        "graph_sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
    }


def _model_key(path: str | os.PathLike[str]) -> str:
    """Content key of a model: sha256 of the graph file plus size and mtime of its external data."""
    p = pathlib.Path(path)
    h = hashlib.sha256(p.read_bytes())
    for q in _external_files(p):
        st = q.stat()
        h.update(f"{q.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _cache_root() -> pathlib.Path:
    env = os.environ.get("SPA_COMPILER_CACHE")
    base = (
        pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "spa-compiler"
    )
    return base / "quality"


def _cached(
    tag: str, path: str | os.PathLike[str], params: Mapping[str, Any], compute: Any, use: bool
) -> dict[str, np.ndarray]:
    """`compute()` (a dict of arrays) for model `path`, cached on disk when `use`."""
    if not use:
        return compute()  # type: ignore[no-any-return]
    key = hashlib.sha256(
        (_model_key(path) + json.dumps(dict(params), sort_keys=True)).encode()
    ).hexdigest()[:24]
    f = _cache_root() / f"{tag}-{key}.npz"
    if f.is_file():
        with np.load(f, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    out = compute()
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **out)
    os.replace(tmp, f)
    return out  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- SmolLM2
@functools.lru_cache(maxsize=1)
def _smollm2_tokenizer() -> Any:
    from spa_compiler.models_zoo import real

    return real.load_tokenizer("smollm2-135m")


@functools.lru_cache(maxsize=8)
def _book_tokens(book: str) -> np.ndarray:
    """Token ids of a whole novel (SmolLM2 tokenizer, no special tokens), int64."""
    from spa_compiler.models_zoo import data

    books = data.jane_austen_books()
    if book not in books:
        raise ValueError(f"unknown book {book!r}; one of {sorted(books)}")
    ids = _smollm2_tokenizer()(books[book], add_special_tokens=False)["input_ids"]
    return np.asarray(ids, dtype=np.int64)


def book_windows(book: str, windows: int, seq: int) -> np.ndarray:
    """The first `windows` non-overlapping `seq`-token windows of `book`: int64 [windows, seq]."""
    ids = _book_tokens(book)
    if windows * seq > ids.size:
        raise ValueError(f"{book} has {ids.size} tokens, fewer than {windows} x {seq}")
    return ids[: windows * seq].reshape(windows, seq).copy()


def _token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-position NLL of `targets` [S] under `logits` [S, V], float64 [S].

    The log-sum-exp runs in float32 in place (max-shifted, so exp <= 1 and the sum is exact to
    ~1e-7 relative; perplexities agree with a float64 computation to ~1e-6), 5-10x faster than
    float64 on a 512 x 49152 window.
    """
    lg = np.array(logits, dtype=np.float32, copy=True)
    picked = lg[np.arange(lg.shape[0]), targets].astype(np.float64)
    m = lg.max(axis=-1, keepdims=True)
    np.subtract(lg, m, out=lg)
    np.exp(lg, out=lg)
    lse = m[:, 0].astype(np.float64) + np.log(lg.sum(axis=-1, dtype=np.float64))
    return lse - picked  # type: ignore[no-any-return]


def _window_nll(
    onnx_path: str | os.PathLike[str], wins: np.ndarray, threads: int, batch: int,
    dense_path: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, list[str], float, dict[str, np.ndarray] | None]:
    """Summed NLL of each window's seq - 1 next-token predictions; the input names; seconds.

    With `dense_path`, the dense model runs on the same windows too, and the fourth value holds per
    window the dense NLL sum, the summed KL(dense || model) of the next-token distributions and
    the count of positions whose top-1 token agrees (over the same seq - 1 positions).
    """
    from spa_compiler.fidelity import kl_rows

    sess = make_session(onnx_path, threads=threads)
    dsess = make_session(dense_path, threads=threads) if dense_path is not None else None
    names = _input_names(sess)
    out_name = sess.get_outputs()[0].name
    nll_sum = np.zeros(len(wins))
    fid = None if dsess is None else {k: np.zeros(len(wins)) for k in ("dense_nll_sum", "kl_sum", "top1_agree")}
    t1 = time.perf_counter()
    for start in range(0, len(wins), batch):
        ids = wins[start : start + batch]
        (logits,) = sess.run([out_name], _text_feed(names, ids))
        if logits.ndim != 3 or logits.shape[:2] != ids.shape:
            raise ValueError(f"expected logits [batch, seq, vocab], got {logits.shape}")
        dense = None
        if dsess is not None:
            (dense,) = dsess.run([dsess.get_outputs()[0].name], _text_feed(_input_names(dsess), ids))
        for j in range(ids.shape[0]):
            nll_sum[start + j] = _token_nll(logits[j, :-1], ids[j, 1:]).sum()
            if dense is not None and fid is not None:
                fid["dense_nll_sum"][start + j] = _token_nll(dense[j, :-1], ids[j, 1:]).sum()
                fid["kl_sum"][start + j] = kl_rows(dense[j, :-1], logits[j, :-1]).sum()
                fid["top1_agree"][start + j] = (dense[j, :-1].argmax(-1) == logits[j, :-1].argmax(-1)).sum()
        del logits, dense
    return nll_sum, names, time.perf_counter() - t1, fid


def smollm2_perplexity(
    onnx_path: str | os.PathLike[str],
    *,
    dense_path: str | os.PathLike[str] | None = None,
    windows: int = 16,
    seq: int = 512,
    book: str = EVAL_BOOK,
    threads: int = 2,
    batch: int = 1,
    cache_dense: bool = True,
) -> dict[str, Any]:
    """Token-level perplexity of a SmolLM2 ONNX model on the first `windows` `seq`-token windows of
    `book` (non-overlapping; each window scores seq - 1 tokens).

    The model's inputs are inspected: ``input_ids`` alone (dynamo export) or with
    ``attention_mask`` / ``position_ids`` (TorchScript export), which get all-ones and 0..seq-1.
    Its first output must be logits [batch, seq, vocab]. With `dense_path`, the dense model's
    perplexity on the same windows (cached) and the ratio are reported too, with the fidelity to
    the dense model over the same scored positions: ``kl_to_dense`` (mean KL(dense || model) of
    the next-token distributions, nats) and ``top1_agreement`` (share of positions whose most
    likely next token is the dense model's); the dense model runs alongside for these.

    Returns:
        perplexity, mean NLL (nats), per-window perplexities, tokens scored, timing, sizes.
    """
    t0 = time.perf_counter()
    wins = book_windows(book, windows, seq)
    t_tok = time.perf_counter() - t0
    same = dense_path is not None and _same_file(onnx_path, dense_path)
    nll_sum, names, t_run, fid = _window_nll(onnx_path, wins, threads, batch,
                                             dense_path if dense_path is not None and not same else None)
    scored = windows * (seq - 1)
    nll = float(nll_sum.sum() / scored)
    res: dict[str, Any] = {
        "model": "smollm2-135m",
        "metric": "perplexity",
        "perplexity": float(np.exp(nll)),
        "nll": nll,
        "window_perplexity": [float(np.exp(s / (seq - 1))) for s in nll_sum],
        "book": book,
        "windows": windows,
        "seq": seq,
        "tokens_scored": scored,
        "inputs": names,
        "threads": threads,
        "seconds_tokenize": round(t_tok, 2),
        "seconds_model": round(t_run, 2),
        "seconds_per_window": round(t_run / windows, 3),
        "onnx": _model_info(onnx_path),
    }
    if dense_path is not None:
        t1 = time.perf_counter()
        params = {"windows": windows, "seq": seq, "book": book, "v": 1}
        dense = _cached(
            "smollm2",
            dense_path,
            params,
            # the same file: its own numbers; else the dense run alongside (also fills the cache)
            (lambda: {"nll_sum": nll_sum}) if same or fid is None else (lambda: {"nll_sum": fid["dense_nll_sum"]}),
            cache_dense,
        )["nll_sum"]
        dense_ppl = float(np.exp(dense.sum() / scored))
        kl = 0.0 if fid is None else float(fid["kl_sum"].sum() / scored)
        agree = 1.0 if fid is None else float(fid["top1_agree"].sum() / scored)
        res.update(
            {
                "dense_perplexity": dense_ppl,
                "perplexity_ratio_to_dense": res["perplexity"] / dense_ppl,
                # fidelity: the next-token distributions against the dense model's, same positions
                "kl_to_dense": kl,
                "top1_agreement": agree,
                "seconds_dense": round(time.perf_counter() - t1, 2),
                "dense_onnx": _model_info(dense_path),
            }
        )
    return res


def smollm2_calibration(
    n: int = 64, seq: int = 512, books: Sequence[str] = CALIB_BOOKS
) -> Iterator[Feed]:
    """`n` calibration feeds of `seq` tokens from novels other than the evaluation book.

    Windows are non-overlapping and taken round-robin over `books` (window k of each book in turn,
    from each book's start). Each feed has ``input_ids``, ``attention_mask`` and ``position_ids``,
    all int64 [1, seq]; the compiler keeps the ones the model takes.
    """
    if EVAL_BOOK in books:
        raise ValueError(f"calibration must not use the evaluation book {EVAL_BOOK!r}")
    toks = {b: _book_tokens(b) for b in books}
    produced = 0
    k = 0
    while produced < n:
        progressed = False
        for b in books:
            if produced >= n:
                break
            ids = toks[b]
            if (k + 1) * seq > ids.size:
                continue
            progressed = True
            window = ids[k * seq : (k + 1) * seq][None]
            yield _text_feed(("input_ids", "attention_mask", "position_ids"), window)
            produced += 1
        if not progressed:
            raise ValueError(f"the calibration books hold fewer than {n} windows of {seq} tokens")
        k += 1


def smollm2_calibration_256() -> Iterator[Feed]:
    """256 windows of 512 tokens (4x the default; the calibration-size row of 2026-12-02)."""
    return smollm2_calibration(256)


# ----------------------------------------------------------------------------- MiniLM
@functools.lru_cache(maxsize=1)
def _movie_data() -> tuple[tuple[str, ...], np.ndarray]:
    from spa_compiler.models_zoo import data

    rows = data.movie_snippets()
    return tuple(t for t, _ in rows), np.array([lab for _, lab in rows], dtype=np.int64)


def movie_split(n_train: int = 8000, n_test: int = 2568) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) into `data.movie_snippets()`: a fixed permutation (seed 0); train is
    its first `n_train` entries and test its LAST `n_test`, so the test set of a given size never
    changes with `n_train` and the two never overlap."""
    texts, _ = _movie_data()
    total = len(texts)
    if n_train + n_test > total:
        raise ValueError(f"n_train + n_test = {n_train + n_test} > {total} snippets")
    perm = np.random.default_rng(SPLIT_SEED).permutation(total)
    return perm[:n_train], perm[total - n_test :]


@functools.lru_cache(maxsize=1)
def _minilm_tokenizer() -> Any:
    from spa_compiler.models_zoo import real

    return real.load_tokenizer("minilm-l6")


def _minilm_tokens(texts: Sequence[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    enc = _minilm_tokenizer()(
        list(texts), truncation=True, max_length=MINILM_MAX_LENGTH, padding=False
    )
    return (
        [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]],
        [np.asarray(x, dtype=np.int64) for x in enc["token_type_ids"]],
    )


def minilm_embeddings(session: Any, texts: Sequence[str], *, batch: int = 64) -> np.ndarray:
    """Mean-pooled (attention-mask weighted) ``last_hidden_state`` of `texts`: float32 [N, d].

    Sentences are sorted by length and batched with right padding (masked), then restored to order.
    """
    ids, _ = _minilm_tokens(texts)
    names = _input_names(session)
    out_name = session.get_outputs()[0].name
    order = np.argsort([len(x) for x in ids], kind="stable")
    result: np.ndarray | None = None
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        width = max(len(ids[i]) for i in idx)
        x = np.zeros((len(idx), width), dtype=np.int64)  # [PAD] = 0
        mask = np.zeros_like(x)
        for r, i in enumerate(idx):
            x[r, : len(ids[i])] = ids[i]
            mask[r, : len(ids[i])] = 1
        (h,) = session.run([out_name], _text_feed(names, x, mask))
        w = mask[..., None].astype(np.float32)
        emb = (h * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-9)
        if result is None:
            result = np.zeros((len(ids), emb.shape[1]), dtype=np.float32)
        result[idx] = emb
    assert result is not None
    return result


def _probe(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> float:
    """Test accuracy of a standardized logistic-regression probe."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train.astype(np.float64), y_train)
    return float((clf.predict(x_test.astype(np.float64)) == y_test).mean())


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from spa_compiler.fidelity import cosine_rows

    return cosine_rows(a, b)


def minilm_probe(
    onnx_path: str | os.PathLike[str],
    *,
    dense_path: str | os.PathLike[str] | None = None,
    n_train: int = 8000,
    n_test: int = 2568,
    threads: int = 2,
    batch: int = 64,
    cache_dense: bool = True,
) -> dict[str, Any]:
    """Sentiment linear-probe accuracy of MiniLM embeddings, and cosine similarity to the dense
    model's embeddings of the test sentences when `dense_path` is given.

    Probe: StandardScaler + LogisticRegression(C=1, lbfgs) on mean-pooled embeddings, label =
    rating > 0, trained on `n_train` snippets and scored on `n_test` (`movie_split`).
    """
    texts, labels = _movie_data()
    tr, te = movie_split(n_train, n_test)
    sel = np.concatenate([tr, te])
    sel_texts = [texts[i] for i in sel]
    t0 = time.perf_counter()
    sess = make_session(onnx_path, threads=threads)
    emb = minilm_embeddings(sess, sel_texts, batch=batch)
    t_emb = time.perf_counter() - t0
    del sess
    acc = _probe(emb[:n_train], labels[tr], emb[n_train:], labels[te])
    res: dict[str, Any] = {
        "model": "minilm-l6",
        "metric": "probe_accuracy",
        "probe_accuracy": acc,
        "n_train": int(n_train),
        "n_test": int(n_test),
        "positive_fraction_test": float(labels[te].mean()),
        "embedding_dim": int(emb.shape[1]),
        "max_length": MINILM_MAX_LENGTH,
        "threads": threads,
        "seconds_model": round(t_emb, 2),
        "seconds_per_sentence": round(t_emb / len(sel), 4),
        "onnx": _model_info(onnx_path),
    }
    if dense_path is not None:
        test_texts = [texts[i] for i in te]

        def compute() -> dict[str, np.ndarray]:
            return {
                "emb": minilm_embeddings(
                    make_session(dense_path, threads=threads), test_texts, batch=batch
                )
            }

        t1 = time.perf_counter()
        params = {"n_test": n_test, "max_length": MINILM_MAX_LENGTH, "v": 1}
        dense = _cached("minilm", dense_path, params, compute, cache_dense)["emb"]
        cos = _cosine(emb[n_train:], dense)
        res.update(
            {
                "cosine_to_dense": float(cos.mean()),
                "cosine_to_dense_min": float(cos.min()),
                "cosine_to_dense_p05": float(np.quantile(cos, 0.05)),
                "seconds_dense": round(time.perf_counter() - t1, 2),
                "dense_onnx": _model_info(dense_path),
            }
        )
    return res


def minilm_calibration(n: int = 1024, *, n_train: int = 8000) -> Iterator[Feed]:
    """`n` feeds of one sentence each (no padding), from the probe's TRAIN split only (the first
    `n` of it). Keys: ``input_ids``, ``attention_mask``, ``token_type_ids`` int64 [1, L].

    1,024 sentences (about 28,000 tokens, 18 per input column of the 1,536-wide FFN output): at
    0.6x one fixed plan re-fitted on them measured a cosine to dense of 0.929 against 0.923 on 256
    (the default before 2026-12-02; rows made with it reproduce with `minilm_calibration_256`);
    2,048 added 0.0006 (README.md, "Calibration size")."""
    if n > n_train:
        raise ValueError(f"n = {n} > n_train = {n_train}: calibration must stay in the train split")
    texts, _ = _movie_data()
    tr, _te = movie_split(n_train, len(texts) - n_train)
    ids, types = _minilm_tokens([texts[i] for i in tr[:n]])
    for x, t in zip(ids, types, strict=True):
        yield {
            "input_ids": x[None],
            "attention_mask": np.ones((1, x.size), dtype=np.int64),
            "token_type_ids": t[None],
        }


def minilm_calibration_256() -> Iterator[Feed]:
    """The 256 sentences every MiniLM row before 2026-12-02 was calibrated on."""
    return minilm_calibration(256)


def minilm_calibration_2048() -> Iterator[Feed]:
    """2,048 sentences (the calibration-size row of 2026-12-02)."""
    return minilm_calibration(2048)


# ----------------------------------------------------------------------------- EfficientNet
def _resize_matrix(src: int, dst: int) -> np.ndarray:
    """Bilinear interpolation matrix [dst, src], half-pixel centres (torch align_corners=False)."""
    scale = src / dst
    pos = np.clip((np.arange(dst) + 0.5) * scale - 0.5, 0, src - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, src - 1)
    frac = pos - lo
    r = np.zeros((dst, src), dtype=np.float64)
    r[np.arange(dst), lo] += 1 - frac
    r[np.arange(dst), hi] += frac
    return r


def fashion_images(images: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 3, size, size] in [-1, 1] (bilinear, grey to 3 channels)."""
    r = _resize_matrix(images.shape[1], size).astype(np.float32)
    c = _resize_matrix(images.shape[2], size).astype(np.float32)
    x = images.astype(np.float32) / 127.5 - 1.0
    big = np.einsum("ij,njk,lk->nil", r, x, c, optimize=True)
    return np.ascontiguousarray(np.broadcast_to(big[:, None], (len(x), 3, size, size)))


def _fashion_perm() -> np.ndarray:
    return np.random.default_rng(SPLIT_SEED).permutation(60000)


def fashion_split(n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train-split indices for the probe, test-split indices): fixed permutations."""
    if n_train > FASHION_PROBE_POOL:
        raise ValueError(f"n_train <= {FASHION_PROBE_POOL} (the rest is kept for calibration)")
    if n_test > 10000:
        raise ValueError("n_test <= 10000")
    test_perm = np.random.default_rng(SPLIT_SEED + 1).permutation(10000)
    return _fashion_perm()[:n_train], test_perm[:n_test]


_CLASSIFIER_CHAIN = {"Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Identity", "Dropout"}


def penultimate_tensor(onnx_path: str | os.PathLike[str]) -> str | None:
    """The input of the final classifier of an image model: walk back from the first graph output
    through Gemm / MatMul / Add / Mul ... whose other operands are constants, and return the tensor
    where that affine chain starts (e.g. the flattened pooled features), or None if the output is
    not produced by such a chain."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    g = m.graph
    consts = {t.name for t in g.initializer}
    consts |= {o for n in g.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in g.node for o in n.output}
    cur = g.output[0].name
    steps = 0
    while cur in producer and producer[cur].op_type in _CLASSIFIER_CHAIN:
        node = producer[cur]
        data = [i for i in node.input if i and i not in consts]
        if node.op_type in ("Identity", "Dropout"):
            data = data[:1]
        if len(data) != 1:
            break
        cur = data[0]
        steps += 1
    if steps == 0 or cur == g.output[0].name:
        return None
    return cur


def _efficientnet_run(
    session: Any, images: np.ndarray, outputs: Sequence[str], batch: int
) -> list[np.ndarray]:
    in_name = session.get_inputs()[0].name
    chunks: list[list[np.ndarray]] = [[] for _ in outputs]
    for start in range(0, len(images), batch):
        x = fashion_images(images[start : start + batch])
        for k, y in enumerate(session.run(list(outputs), {in_name: x})):
            chunks[k].append(y.reshape(y.shape[0], -1))
    return [np.concatenate(c) for c in chunks]


def efficientnet_quality(
    onnx_path: str | os.PathLike[str],
    *,
    dense_path: str | os.PathLike[str] | None = None,
    n: int = 2000,
    n_train: int | None = None,
    threads: int = 2,
    batch: int = 32,
    cache_dense: bool = True,
) -> dict[str, Any]:
    """Fashion-MNIST linear-probe accuracy of frozen EfficientNet features (`n_train` train-split
    images, default `n`; `n` test-split images), and, with `dense_path`, top-1 / top-5 agreement
    of the ImageNet predictions with the dense model's on the `n` test images."""
    from spa_compiler.models_zoo import data

    n_train = n if n_train is None else n_train
    tr, te = fashion_split(n_train, n)
    x_tr, y_tr = data.fashion_mnist("train")
    x_te, y_te = data.fashion_mnist("test")
    x_tr, y_tr, x_te, y_te = x_tr[tr], y_tr[tr], x_te[te], y_te[te]
    feat = penultimate_tensor(onnx_path)
    t0 = time.perf_counter()
    sess = make_session(onnx_path, threads=threads, extra_outputs=[feat] if feat else ())
    logit_name = sess.get_outputs()[0].name
    outs = [logit_name] + ([feat] if feat else [])
    f_tr = _efficientnet_run(sess, x_tr, outs[-1:], batch)[0]
    te_out = _efficientnet_run(sess, x_te, outs, batch)
    t_run = time.perf_counter() - t0
    del sess
    logits_te, f_te = te_out[0], te_out[-1]
    acc = _probe(f_tr, y_tr, f_te, y_te)
    res: dict[str, Any] = {
        "model": "efficientnet-lite0",
        "metric": "probe_accuracy",
        "probe_accuracy": acc,
        "features": f"penultimate:{feat}" if feat else "logits",
        "feature_dim": int(f_te.shape[1]),
        "n_train": int(n_train),
        "n_test": int(n),
        "threads": threads,
        "seconds_model": round(t_run, 2),
        "seconds_per_image": round(t_run / (n_train + n), 4),
        "onnx": _model_info(onnx_path),
    }
    if dense_path is not None:

        def compute() -> dict[str, np.ndarray]:
            s = make_session(dense_path, threads=threads)
            return {"logits": _efficientnet_run(s, x_te, [s.get_outputs()[0].name], batch)[0]}

        t1 = time.perf_counter()
        params = {"n": n, "seed": SPLIT_SEED, "v": 1}
        dense = _cached("efficientnet", dense_path, params, compute, cache_dense)["logits"]
        from spa_compiler.fidelity import kl_rows

        top1_d = dense.argmax(axis=1)
        top1 = logits_te.argmax(axis=1)
        top5 = np.argsort(-logits_te, axis=1)[:, :5]
        res.update(
            {
                "top1_agreement": float((top1 == top1_d).mean()),
                "top5_contains_dense_top1": float((top5 == top1_d[:, None]).any(axis=1).mean()),
                "logit_cosine_to_dense": float(_cosine(logits_te, dense).mean()),
                "kl_to_dense": float(kl_rows(dense, logits_te).mean()),
                "seconds_dense": round(time.perf_counter() - t1, 2),
                "dense_onnx": _model_info(dense_path),
            }
        )
    return res


def efficientnet_calibration(n: int = 256, *, batch: int = 1) -> Iterator[Feed]:
    """`n` images of the Fashion-MNIST TRAIN split never used by the probe (permutation entries
    from `FASHION_PROBE_POOL` on), preprocessed like the evaluation, in feeds of `batch`:
    ``{"input": float32 [batch, 3, 224, 224]}``."""
    from spa_compiler.models_zoo import data

    if n > 60000 - FASHION_PROBE_POOL:
        raise ValueError(f"n <= {60000 - FASHION_PROBE_POOL}")
    idx = _fashion_perm()[FASHION_PROBE_POOL : FASHION_PROBE_POOL + n]
    x, _ = data.fashion_mnist("train")
    for start in range(0, n, batch):
        yield {"input": fashion_images(x[idx[start : start + batch]])}


# ----------------------------------------------------------------------------- calibration files
def write_calibration_dir(
    out_dir: str | os.PathLike[str], feeds: Iterable[Mapping[str, Any]]
) -> int:
    """Write `feeds` as ``calib_00000.npz``, ... (one feed each, keyed by input name) into
    `out_dir`, the layout ``spa-compile --calib DIR`` reads. Older ``calib_*.npz`` files there are
    removed first. Returns the number of feeds written."""
    d = pathlib.Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("calib_*.npz"):
        old.unlink()
    count = 0
    for k, feed in enumerate(feeds):
        buf = io.BytesIO()
        np.savez(buf, **{name: np.asarray(v) for name, v in feed.items()})
        tmp = d / f".calib_{k:05d}.npz.tmp"
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, d / f"calib_{k:05d}.npz")
        count += 1
    return count
