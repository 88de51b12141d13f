"""Small statistics shared across the harness (no harness imports: any module may use them)."""

from __future__ import annotations

import numpy as np


def least_squares_slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The least-squares slope of y against x, per row of y: x (k,), y (k,) or (R, k).

        b = Σ_i (x_i − x̄)(y_i − ȳ) / Σ_i (x_i − x̄)²

    (the degree-1 coefficient of numpy.polyfit, which computes it, so every caller keeps its
    numbers). Returns a float for 1-d y, else one slope per row (R,). Non-finite values are not
    skipped: select the finite points first.
    """
    return np.polyfit(x, np.asarray(y).T, 1)[0]
