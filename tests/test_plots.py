"""Figures: `plots.InView` draws exactly the ticks matplotlib draws, from fewer tick objects."""

from __future__ import annotations

import numpy as np
import pytest

from harness.outputs import plots
from harness.outputs.plots import plt


def _pixels(y: np.ndarray, in_view: bool) -> tuple[np.ndarray, int]:
    """The RGBA pixels of one log-y panel of y, and how many tick locations its axis asked for."""
    fig, ax = plt.subplots(figsize=(4, 3), dpi=80)
    ax.plot(np.arange(1, len(y) + 1), y, "o-")
    if in_view:
        plots.log_y(ax)
    else:  # log_y as it was: matplotlib's own locators
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plots.LogTicks())
        ax.yaxis.set_minor_formatter(plots.LogTicks(labelOnlyBase=False))
    ax.grid(True, which="major")
    fig.canvas.draw()
    n = len(ax.yaxis.get_majorticklocs()) + len(ax.yaxis.get_minorticklocs())
    pixels = np.asarray(fig.canvas.buffer_rgba()).copy()
    plt.close(fig)
    return pixels, n


@pytest.mark.parametrize("lo, hi", [(3e-3, 40.0), (0.7, 3.0), (1e-30, 1e5), (1.0, 1.0 + 1e-9)])
def test_in_view_draws_the_same_ticks_from_fewer(lo, hi):
    y = np.geomspace(lo, hi, 30)
    before, n_before = _pixels(y, in_view=False)
    after, n_after = _pixels(y, in_view=True)
    assert np.array_equal(before, after), f"{(before != after).any(-1).sum()} pixels differ"
    assert n_after <= n_before
    if (lo, hi) == (3e-3, 40.0):  # decades only partly in view: some locations are dropped
        assert n_after < n_before
