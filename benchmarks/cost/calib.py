"""Calibration feeds for the cost benchmarks (random tokens: the cost does not depend on the text).

    spa-compile smollm2.onnx --calib benchmarks/cost/calib.py:smollm2_64x512 ...
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def tokens(n: int, seq: int, vocab: int, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """`n` feeds of one sequence of `seq` random token ids in [0, vocab)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield {"input_ids": rng.integers(0, vocab, size=(1, seq), dtype=np.int64)}


def smollm2_64x512() -> Iterator[dict[str, np.ndarray]]:
    """64 sequences of 512 tokens (SmolLM2's vocabulary of 49152): the issue's calibration size."""
    return tokens(64, 512, 49152)


def smollm2_16x512() -> Iterator[dict[str, np.ndarray]]:
    """16 sequences of 512 tokens."""
    return tokens(16, 512, 49152)


def llama1b_8x512() -> Iterator[dict[str, np.ndarray]]:
    """8 sequences of 512 tokens (a 32000-token vocabulary, LLaMA's), with mask and positions."""
    for feed in tokens(8, 512, 32000):
        seq = feed["input_ids"].shape[1]
        yield {**feed, "attention_mask": np.ones((1, seq), dtype=np.int64),
               "position_ids": np.arange(seq, dtype=np.int64)[None]}
