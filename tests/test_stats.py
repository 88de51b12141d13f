"""harness.core.stats.least_squares_slope: the one per-layer slope every rate in the harness uses
(papers, order_chaos, isometry, phase, the Jacobian note), against its closed form."""

from __future__ import annotations

import numpy as np
import pytest

from harness.core.stats import least_squares_slope

EPS = np.finfo(np.float64).eps


def closed_form(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """b = Σ (x − x̄)(y − ȳ) / Σ (x − x̄)², per row of y."""
    dx = x - x.mean()
    dy = y - y.mean(-1, keepdims=True)
    return (dy * dx).sum(-1) / (dx * dx).sum()


def tolerance(x: np.ndarray, y: np.ndarray) -> float:
    """Both sides are float64 least squares on k points: each is within ~k·eps·cond of the exact
    slope times the data's slope scale max|y|/(max x − min x), cond the condition number of the
    column-scaled design [x, 1] (what polyfit solves); a factor 10 covers the two errors adding."""
    A = np.stack([x, np.ones_like(x)], 1)
    A = A / np.linalg.norm(A, axis=0)
    cond = np.linalg.cond(A)
    scale = np.abs(y).max() / (x.max() - x.min())
    return 10 * len(x) * EPS * cond * scale


@pytest.mark.parametrize("L", [2, 3, 10, 50])
def test_rows_match_the_closed_form(L):
    rng = np.random.default_rng(L)
    x = np.arange(1, L + 1, dtype=np.float64)
    y = rng.normal(size=(5, L)) * 10 + 0.3 * x
    got = least_squares_slope(x, y)
    assert got.shape == (5,)
    np.testing.assert_allclose(got, closed_form(x, y), rtol=0, atol=tolerance(x, y))
    # one row alone (1-d y) gives a float with the same slope
    one = least_squares_slope(x, y[2])
    assert np.ndim(one) == 0
    assert abs(one - closed_form(x, y[2])) <= tolerance(x, y[2])


def test_recovers_an_exact_line_and_uneven_x():
    """y = 3 − 2.5 x on an uneven x (a fit window): slope −2.5 (exactly representable)."""
    x = np.array([2.0, 3.0, 5.0, 9.0, 10.0])
    y = 3.0 - 2.5 * x
    assert abs(least_squares_slope(x, y) + 2.5) <= tolerance(x, y)
    # not the slope of the end points of noisy data: a bent series is fitted, not interpolated
    bent = y + np.array([0.0, 1.0, 0.0, -1.0, 0.0])
    assert abs(least_squares_slope(x, bent) - closed_form(x, bent)) <= tolerance(x, bent)
    assert abs(least_squares_slope(x, bent) + 2.5) > 0.1
