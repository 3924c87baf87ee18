"""Data-free inputs: what the data-free criterion (obspa) measures the model's response on.

Random feeds follow the input signature (`ort.random_feeds`). For language models (token ids in,
next-token logits out) uniformly random tokens are far from text, so the feeds are re-sampled from
the model's own next-token distribution for a few rounds (`self_generated`), and short latency
shapes are repeated until the statistics see enough tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from spa_compiler.ir import ModelIR
from spa_compiler.ort import gather_rows, make_session, random_feeds


def language_model_io(model: ModelIR) -> tuple[str, int] | None:
    """(token input name, vocabulary) if the model maps token ids to next-token logits."""
    ints = [t for t in model.graph.inputs if np.issubdtype(np.dtype(t.dtype), np.integer) and gather_rows(t)]
    if not ints or len(model.graph.outputs) != 1:
        return None
    vocab = gather_rows(ints[0])
    out = model.graph.outputs[0]
    if out.shape is None or not out.shape or out.shape[-1] != vocab:
        return None
    return ints[0].name, int(vocab)


def self_generated(
    model: ModelIR, feeds: list[dict[str, np.ndarray]], *, rounds: int, seed: int, top_k: int = 50
) -> list[dict[str, np.ndarray]]:
    """Data-free inputs that look like the model's own text (language models only).

    Each round runs the model once on every sequence and re-samples all tokens after the first, in
    parallel, from the model's own top-k next-token distribution at the previous position, so after
    a few rounds the sequences follow the model's statistics. Other models get `feeds` back unchanged.
    """
    io = language_model_io(model)
    if io is None or rounds <= 0:
        return feeds
    name, _vocab = io
    sess = make_session(model, optimize=True)
    rng = np.random.default_rng(seed)
    out = []
    for feed in feeds:
        ids = np.array(feed[name])
        for _ in range(rounds):
            (logits,) = sess.run(None, {**feed, name: ids})
            logits = np.asarray(logits[..., :-1, :], dtype=np.float64)
            top = np.argpartition(-logits, top_k, axis=-1)[..., :top_k]
            z = np.take_along_axis(logits, top, axis=-1)
            p = np.exp(z - z.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
            u = rng.random(p.shape[:-1] + (1,))
            choice = np.minimum((p.cumsum(axis=-1) < u).sum(axis=-1), top_k - 1)
            ids[..., 1:] = np.take_along_axis(top, choice[..., None], axis=-1)[..., 0].astype(ids.dtype)
        out.append({**feed, name: ids})
    return out


#: Data-free statistics of a non-language model read at most this many samples (leading axis) of
#: random input in all: 8 feeds at batch <= 8, 2 feeds at batch 32.
SYNTHETIC_SAMPLES = 64


def synthetic_feeds(
    model: ModelIR,
    input_shapes: Mapping[str, Sequence[int]],
    *,
    count: int,
    seed: int,
    min_tokens: int = 4096,
    lm_rounds: int = 4,
) -> list[dict[str, np.ndarray]]:
    """Random feeds (seeds seed+1, seed+2, ...): `count` of them, but at most `SYNTHETIC_SAMPLES`
    samples (leading axis) in all, so the statistics' cost does not grow with the deploy batch;
    for language models as many as make `min_tokens` tokens (one at 8x512, 32 at 1x128), re-sampled
    from the model itself for `lm_rounds` rounds."""
    first = random_feeds(model, input_shapes, seed=seed + 1)
    n = count
    io = language_model_io(model)
    if io is not None:  # a short latency shape (1x128) must not starve the statistics, a long one needs few
        n = -(-min_tokens // max(1, int(np.asarray(first[io[0]]).size)))
    elif first:
        batch = max(1, int(np.asarray(next(iter(first.values()))).shape[0] if np.ndim(next(iter(first.values()))) else 1))
        n = min(n, max(1, -(-SYNTHETIC_SAMPLES // batch)))
    feeds = [first, *(random_feeds(model, input_shapes, seed=seed + 1 + i) for i in range(1, n))]
    return self_generated(model, feeds, rounds=lm_rounds, seed=seed)
