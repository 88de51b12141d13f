"""Conv theory: the position-resolved recursion against closed forms and the MLP theory, and
against simulated conv stacks at the centre, an edge and the corner (seeded; tolerances from
the replicate standard error at a stated family-wise false-positive rate)."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest

from harness.archs.conv import position_maps, window_sum
from harness.sim.runner import measure
from harness.theory.meanfield import predict
from tests.conftest import small_spec
from tests.test_theory import z_crit


def _border_distance(n: int, dims: int) -> np.ndarray:
    """min distance of each position of an n^dims image to the border (0 on the border)."""
    d = np.minimum(np.arange(n), np.arange(n)[::-1])
    grids = np.meshgrid(*([d] * dims), indexing="ij")
    return np.minimum.reduce(grids)


def test_zero_padding_border_deficit_closed_form():
    """relu + kaiming fan_in keeps q = 2 with circular padding. With zero padding after one 3×3
    layer a corner sees 4 of 9 taps and an edge 6 (docs/theory.md, "Conv stacks"), and the deficit reaches one
    pixel further inward per layer: q^l(p) = 2 exactly iff p is ≥ l pixels from the border."""
    spec = small_spec("arch=conv", "act=relu", "scheme=kaiming", "depth=5", "width=4", "image=12")
    q = position_maps(spec)["forward"]
    np.testing.assert_allclose(q[0, 6, 6], 2.0, rtol=1e-14)
    np.testing.assert_allclose(q[0, 0, 0], 2.0 * 4 / 9, rtol=1e-14)
    np.testing.assert_allclose(q[0, 0, 6], 2.0 * 6 / 9, rtol=1e-14)
    dist = _border_distance(12, 2)
    for l in range(5):
        assert np.array_equal(np.isclose(q[l], 2.0, rtol=1e-12, atol=0), dist >= l + 1), l
    # backward from the readout: g^{L-1}(p) = D · Σ_t C_out Var(W) 1[p−t inside] = ½ · (2/9)·taps
    g = position_maps(spec)["backward"]
    np.testing.assert_allclose(g[-2, [6, 0, 0], [6, 6, 0]], [1.0, 6 / 9, 4 / 9], rtol=1e-14)


def test_conv1d_edge_and_wide_kernel_closed_form():
    """Conv1d, kernel 5, linear act, kaiming fan_in (gain 1): q^1(p) = q_0 · (taps inside)/5."""
    spec = small_spec("arch=conv", "conv_dim=1", "kernel=5", "act=linear", "scheme=kaiming",
                      "depth=2", "width=3", "image=9", "input_var=0.5")
    q = position_maps(spec)["forward"]
    np.testing.assert_allclose(q[0], 0.5 * np.array([3, 4, 5, 5, 5, 5, 5, 4, 3]) / 5, rtol=1e-14)
    # layer 2 sums q^1 over the inside taps: at p = 0 taps 0, 1, 2 → (3 + 4 + 5)/5 · 0.5/5
    np.testing.assert_allclose(q[1, 0], 0.5 * 12 / 25, rtol=1e-14)


def test_window_sum_against_a_direct_loop():
    rng = np.random.default_rng(0)
    a, taps = rng.random((5, 6)), rng.random((3, 3))
    for mode in ("zeros", "circular"):
        for sign in (1, -1):
            want = np.zeros_like(a)
            for i in range(5):
                for j in range(6):
                    for u in range(3):
                        for v in range(3):
                            pi, pj = i + sign * (u - 1), j + sign * (v - 1)
                            if mode == "circular":
                                pi, pj = pi % 5, pj % 6
                            elif not (0 <= pi < 5 and 0 <= pj < 6):
                                continue
                            want[i, j] += taps[u, v] * a[pi, pj]
            np.testing.assert_allclose(window_sum(a, taps, mode, sign), want, rtol=1e-14)


@pytest.mark.parametrize(
    "overrides",
    [
        ("act=relu", "scheme=kaiming", "mode=fan_out", "widths=[3,8,5,6]"),
        ("act=tanh", "scheme=xavier_uniform", "bias_std=0.2", "widths=[4,6,6,2]"),
        ("act=gelu", "scheme=kaiming_uniform", "width=5", "conv_dim=1", "kernel=5"),
    ],
)
def test_circular_padding_is_the_mlp_theory(overrides):
    """With circular padding every position follows the MLP recursion with σ_w² = fan_in·Var(W)
    forward and fan_out·Var(W) backward: the MLP theory of widths n_l = C_l·∏k (whose weights
    (C_l·∏k, C_{l-1}·∏k) have the conv's fans). The weight gradient sums over the P positions."""
    conv_spec = small_spec("arch=conv", "padding_mode=circular", "depth=3", "image=7", *overrides)
    T = math.prod(conv_spec.kernel_shape)
    mlp_spec = small_spec(*[o for o in overrides if not o.startswith(("width", "conv_dim", "kernel"))],
                          "depth=3", "widths=[" + ",".join(str(c * T) for c in conv_spec.widths) + "]")
    conv_th, mlp_th = predict(conv_spec), predict(mlp_spec)
    for k in ("forward", "activation", "backward"):
        np.testing.assert_allclose(conv_th[k], mlp_th[k], rtol=1e-12, err_msg=k)
    P = math.prod(conv_spec.spatial)
    np.testing.assert_allclose(conv_th["weight_grad"], P * mlp_th["weight_grad"], rtol=1e-12)
    maps = position_maps(conv_spec)
    for k in ("forward", "backward"):  # every position alike
        m = maps[k].reshape(3, -1)
        np.testing.assert_allclose(m, m[:, :1].repeat(m.shape[1], 1), rtol=1e-13, err_msg=k)


def test_delta_orthogonal_has_no_border_deficit_and_sigma_w2_g2_cin_over_cout():
    spec = small_spec("arch=conv", "scheme=delta_orthogonal", "scheme.gain=1.2", "act=linear",
                      "depth=3", "widths=[4,8,8,16]", "image=6")
    q = position_maps(spec)["forward"]
    # only the centre tap is nonzero, and the centre is always inside: σ_w² = g²·C_in/C_out
    want = np.cumprod([1.44 * 4 / 8, 1.44, 1.44 * 8 / 16])
    np.testing.assert_allclose(q.reshape(3, -1), want[:, None].repeat(36, 1), rtol=1e-14)


# ---- against simulated networks --------------------------------------------------------------

LANDMARKS_2D = {"centre": (3, 3), "edge": (0, 3), "corner": (0, 0)}
LANDMARKS_1D = {"centre": (4,), "edge": (0,)}

STAT_CASES = [
    # (overrides, landmarks): relu-family and linear with symmetric weights, where the mean-field
    # expectations are exact at every width; small depth/width so the replicate distribution is
    # close enough to normal for the standard-error test
    (("act=relu", "scheme=kaiming", "bias_std=0.1", "image=7"), LANDMARKS_2D),
    (("act=leaky_relu", "act.negative_slope=0.2", "scheme=xavier_normal", "image=7",
      "widths=[6,16,12,16,8]"), LANDMARKS_2D),
    (("act=linear", "scheme=orthogonal", "conv_dim=1", "kernel=5", "image=9"), LANDMARKS_1D),
    (("act=relu", "scheme=delta_orthogonal", "scheme.gain=1.4142135623730951", "image=7"),
     LANDMARKS_2D),
    (("act=relu", "scheme=kaiming_uniform", "padding_mode=circular", "image=7"), LANDMARKS_2D),
]


@cache
def _simulate(overrides: tuple[str, ...]):
    spec = small_spec("arch=conv", "depth=4", "width=16", "batch=8", "replicates=128", "seed=11",
                      *overrides)
    return spec, measure(spec, progress=False)


@pytest.mark.parametrize(("overrides", "landmarks"), STAT_CASES)
def test_conv_matches_position_resolved_theory(overrides, landmarks):
    """Pooled quantities and forward/backward at the centre, an edge and the corner: the
    replicate mean agrees with theory within z_crit standard errors (Bonferroni over all the
    comparisons of the case, family-wise α = 1e-3)."""
    spec, m = _simulate(overrides)
    th, maps = predict(spec), position_maps(spec)
    checks = []  # (name, measured (R, n), theory (n,))
    for k in ("forward", "activation", "backward", "weight_grad"):
        checks.append((k, m.values[k], th[k]))
    for k in ("forward", "backward"):
        for name, p in landmarks.items():
            idx = (slice(None), slice(None), *p)
            checks.append((f"{k} at {name}", m.positions[k][idx], maps[k][idx[1:]]))
    z_max = z_crit(sum(len(t) for _, _, t in checks))
    for name, v, t in checks:
        se = v.std(0, ddof=1) / math.sqrt(v.shape[0])
        z = (v.mean(0) - t) / se
        assert np.all(np.abs(z) <= z_max), (name, np.round(z, 2), round(z_max, 2))


def test_the_position_check_can_fail():
    """The same check rejects the MLP (circular) theory at the corner of a zero-padded stack."""
    overrides = STAT_CASES[0][0]
    spec, m = _simulate(overrides)
    wrong = position_maps(small_spec("arch=conv", "depth=4", "width=16", *overrides,
                                     "padding_mode=circular"))
    v = m.positions["forward"][:, :, 0, 0]
    z = (v.mean(0) - wrong["forward"][:, 0, 0]) / (v.std(0, ddof=1) / math.sqrt(v.shape[0]))
    assert np.all(np.abs(z) > z_crit(v.shape[1]))
