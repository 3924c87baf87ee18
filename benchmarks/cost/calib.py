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
    """8 sequences of 512 tokens of a 32000-token vocabulary (benchmarks.cost.models llama1b)."""
    return tokens(8, 512, 32000)


def llama_mini_8x128() -> Iterator[dict[str, np.ndarray]]:
    """8 sequences of 128 tokens of llama-mini's 512-token vocabulary (tests of the 1B case)."""
    return tokens(8, 128, 512)
