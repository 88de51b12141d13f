"""The architecture registry moved code, not numbers: 12 small runs against their outputs from
before the move.

tests/data/before_move/<name>/ holds metrics.parquet (and positions.parquet / jacobian.parquet
where the run writes them) of each config below, made by `harness.run.execute` on the code before
the architecture registry (commit 988d049), and annotations.json, the data-dependent part of
its metadata.json (spec, criticality, finite-width band, numeric events, lsuv). The test reruns
every config (device=cpu, as they were made) and compares: every non-float column exactly, every
float column within a tolerance derived below. On the machine that made them the outputs are
bitwise the same (every frame equal under pandas' assert_frame_equal(check_exact=True), and the
metadata's spec, criticality, band, numeric events and lsuv equal); the tolerance is for another
CPU's BLAS, whose matmuls and reductions may sum in another order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli import compose_config
from harness.run import execute

DATA = Path(__file__).parent / "data" / "before_move"

#: as in the script that made tests/data/before_move (one run each, plot and progress off)
CONFIGS = {
    "mlp_relu": ["depth=6", "width=16", "batch=8", "replicates=3"],
    "mlp_tanh_xavier_bias64": ["act=tanh", "scheme=xavier_normal", "depth=5", "width=12", "batch=6",
                               "replicates=2", "bias_std=0.1", "dtype=float64"],
    "mlp_widths_fanout": ["scheme=kaiming_uniform", "mode=fan_out", "depth=3", "widths=[8,12,6,10]",
                          "batch=5", "replicates=2", "act=gelu"],
    "mlp_jac": ["act=tanh", "scheme=orthogonal", "depth=4", "width=8", "batch=4", "replicates=2",
                "jacobian=2"],
    "mlp_lsuv": ["scheme=lsuv", "depth=4", "width=10", "batch=16", "replicates=2", "act=selu"],
    "mlp_trunc": ["scheme=trunc_normal", "depth=3", "width=10", "batch=4", "replicates=2",
                  "act=sigmoid"],
    "mlp_meanfield_corr": ["scheme=meanfield", "scheme.sigma_w2=1.5", "scheme.sigma_b2=0.05",
                           "depth=4", "width=10", "batch=4", "replicates=2", "act=tanh",
                           "input_corr=0.5"],
    "mlp_vs": ["scheme=variance_scaling", "mode=fan_avg", "depth=3", "width=10", "batch=4",
               "replicates=2", "act=elu"],
    "mlp_torchdef": ["scheme=torch_default", "depth=3", "width=10", "batch=4", "replicates=2",
                     "act=leaky_relu"],
    "conv2d": ["arch=conv", "depth=4", "width=4", "image=6", "batch=3", "replicates=2"],
    "conv1d_circ_delta": ["arch=conv", "conv_dim=1", "padding_mode=circular",
                          "scheme=delta_orthogonal", "act=tanh", "depth=4", "width=4", "image=7",
                          "kernel=5", "batch=3", "replicates=2"],
    "conv_bias64": ["arch=conv", "depth=3", "width=3", "image=5", "batch=2", "replicates=2",
                    "bias_std=0.2", "dtype=float64", "act=softplus"],
}

#: roundings per layer one BLAS may differ from another by: a layer's value passes through one
#: matmul (a sum of ≤ 16·9 products here, summed blockwise: ≲ 8 roundings apart in order), the
#: activation, and a mean over ≤ 6·7·16 entries (≲ 12 roundings), and its relative error is
#: carried to the next layer; 32 ulps per layer covers both with a factor of ~1.5
ULPS_PER_LAYER = 32


def tolerance(dtype: str, depth: int) -> float:
    """Relative tolerance of a run's float outputs: ULPS_PER_LAYER · eps(dtype) · depth (the
    errors of the layers add up along the depth). The theory columns are float64 numpy on any
    run; they get the run's tolerance too (loose for them, but it depends only on libm)."""
    return ULPS_PER_LAYER * float(np.finfo(dtype).eps) * depth


def _compare_frames(got: pd.DataFrame, want: pd.DataFrame, tol: float, what: str) -> None:
    """Non-float columns exactly; a float column's entry x within tol · max |x| over the rows of
    its quantity (a sum's rounding scales with its terms, so a value near 0, e.g. a correlation,
    gets the tolerance of its neighbours); nan where nan, ±inf where ±inf."""
    # config columns added since (resmlp's residual_*: null for these runs; ws: false, its
    # default; norm: "none", its default, with norm_position, norm_eps null) predate the data:
    # every run carries every key
    new = [c for c in got.columns if c not in want.columns
           and (got[c].isna().all() or (got[c].astype(object) == False).all()  # noqa: E712
                or (c == "norm" and (got[c] == "none").all()))]
    got = got.drop(columns=new)
    assert list(got.columns) == list(want.columns), what
    assert len(got) == len(want), what
    group = want["quantity"].to_numpy() if "quantity" in want else np.zeros(len(want))
    for col in want.columns:
        g, w = got[col], want[col]
        if not pd.api.types.is_float_dtype(w.dtype):
            pd.testing.assert_series_equal(g, w, check_exact=True, obj=f"{what}: {col}")
            continue
        assert g.dtype == w.dtype, (what, col)
        gv, wv = g.to_numpy(np.float64), w.to_numpy(np.float64)
        finite = np.where(np.isfinite(wv), np.abs(wv), np.nan)
        scale = pd.Series(finite).groupby(group).transform("max").fillna(0.0).to_numpy()
        ok = (gv == wv) | (np.isnan(gv) & np.isnan(wv)) | (np.abs(gv - wv) <= tol * scale)
        assert ok.all(), (what, col, np.flatnonzero(~ok)[:5], gv[~ok][:5], wv[~ok][:5])


def _compare_json(got: object, want: object, tol: float, where: str) -> None:
    if isinstance(want, dict):
        if isinstance(got, dict):  # keys added since, None for these runs (e.g. residual_*),
            # or at the default of today's behaviour (norm: "none")
            got = {k: v for k, v in got.items()
                   if k in want or not (v in (None, False) or (k == "norm" and v == "none"))}
        assert isinstance(got, dict) and set(got) == set(want), where
        for k in want:
            _compare_json(got[k], want[k], tol, f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _compare_json(g, w, tol, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert isinstance(got, (int, float)), where
        assert got == pytest.approx(want, rel=tol, abs=tol, nan_ok=True), where
    else:
        assert got == want, where


@pytest.mark.parametrize("name", list(CONFIGS))
def test_outputs_equal_those_from_before_the_move(name, tmp_path):
    overrides = CONFIGS[name]
    run = execute(compose_config([*overrides, "device=cpu", "plot=false", "progress=false"]),
                  tmp_path, echo=False)
    tol = tolerance(run.spec.dtype, run.spec.depth)
    files = sorted(p.name for p in (DATA / name).glob("*.parquet"))
    assert files == sorted(p.name for p in tmp_path.glob("*.parquet"))  # the same outputs
    for f in files:
        _compare_frames(pd.read_parquet(tmp_path / f), pd.read_parquet(DATA / name / f), tol,
                        f"{name}/{f}")
    want = json.loads((DATA / name / "annotations.json").read_text())
    got = json.loads((tmp_path / "metadata.json").read_text())
    _compare_json({k: got.get(k) for k in want}, want, tol, name)
