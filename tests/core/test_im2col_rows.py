"""im2col_rows gathers exactly the rows of the full im2col matrix (data-free statistics subsample
positions before building patches, so their cost does not grow with the batch)."""

from __future__ import annotations

import numpy as np
import pytest

from spa_compiler.criteria.hessian import im2col, im2col_rows


@pytest.mark.parametrize(
    ("shape", "kernel", "strides", "pads", "dilations"),
    [
        ((2, 3, 9, 7), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
        ((3, 4, 10, 11), (3, 2), (2, 1), (1, 0, 2, 1), (1, 2)),
        ((2, 5, 12), (3,), (2,), (1, 1), (2,)),
        ((1, 2, 5, 5), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
        ((2, 2, 4, 5, 6), (2, 3, 1), (1, 2, 1), (0, 1, 0, 1, 0, 0), (1, 1, 2)),
    ],
)
def test_rows_equal_full_matrix_rows(shape, kernel, strides, pads, dilations, rng: np.random.Generator) -> None:
    x = rng.standard_normal(shape).astype(np.float32)
    full = im2col(x, kernel, strides=strides, pads=pads, dilations=dilations)
    rows = rng.choice(full.shape[0], min(17, full.shape[0]), replace=False)
    got = im2col_rows(x, kernel, rows, strides=strides, pads=pads, dilations=dilations)
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(got, full[rows])
    every = im2col_rows(x, kernel, np.arange(full.shape[0]), strides=strides, pads=pads, dilations=dilations)
    np.testing.assert_array_equal(every, full)


def test_rows_out_of_range_rejected() -> None:
    with pytest.raises(ValueError, match="rows must lie"):
        im2col_rows(np.zeros((1, 1, 3, 3)), (3, 3), [1])
