"""The `jacobian` measurement (harness.sim.jacobian): exact against autograd, theory in closed form
and against simulation, config errors, outputs.

- J^l = ∂h^l/∂x^0 of every member at its inputs against torch.autograd.functional.jacobian of
  the same network (float64, rectangular layers, biases, smooth and kinked φ); m_1, m_2 and the
  last layer's spectrum against torch.linalg.svdvals of that Jacobian;
- theory: μ_j against scipy quad, the relu family's closed forms (orthogonal relu: v^l = l − 1,
  Gaussian: 2l − 1), orthogonal linear networks are exact isometries at any width;
- E[m_1] of relu networks with Gaussian weights is exact at every width (it is E‖Jᵀr‖² for a
  Gaussian r, the backward moment): replicate means against theory within Bonferroni z·se.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import integrate, stats

from harness.core.activations import get
from harness.outputs.results import JACOBIAN
from harness.run import execute
from harness.sim import jacobian
from harness.sim.runner import bytes_per_replicate, measure, sample_chunk
from harness.theory.meanfield import predict
from tests.conftest import expect_one_line_error, small_spec

ALPHA = 1e-3


def _autograd_jacobians(weights, biases, x0, act, r: int, b: int) -> list[torch.Tensor]:
    """∂h^l/∂x^0 for member r at input b, l = 1..L, by autograd through an explicit loop."""
    def h_at(l):
        def f(x):
            for k in range(l + 1):
                h = weights[k][r] @ x + (biases[k][r] if biases is not None else 0.0)
                if k < l:
                    x = act.phi(h)
            return h
        return f
    return [torch.autograd.functional.jacobian(h_at(l), x0[r, b]) for l in range(len(weights))]


@pytest.mark.parametrize("act_name", ["tanh", "relu", "gelu"])
def test_jacobian_equals_autograd(act_name):
    spec = small_spec(f"act={act_name}", "depth=4", "widths=[6,9,5,8,7]", "batch=3",
                      "replicates=2", "bias_std=0.3", "dtype=float64", "jacobian=3",
                      "scheme=xavier_normal", "device=cpu")
    weights, biases, x0, _ = sample_chunk(spec, 2, torch.Generator().manual_seed(3))
    got, eig = jacobian.propagate(weights, biases, x0, spec.activation, spectrum=True)
    n0 = spec.widths[0]
    for r in range(2):
        m1s, m2s, last = [], [], []
        for b in range(3):
            Js = _autograd_jacobians(weights, biases, x0, spec.activation, r, b)
            lam = [torch.linalg.svdvals(J).square() for J in Js]  # nonzero part of JᵀJ's spectrum
            m1s.append([float(v.sum()) / n0 for v in lam])
            m2s.append([float(v.square().sum()) / n0 for v in lam])
            last.append(torch.cat([torch.zeros(n0 - len(lam[-1]), dtype=torch.float64),
                                   lam[-1].flip(0)]))
        m1, m2 = np.array(m1s), np.array(m2s)  # (inputs, L)
        np.testing.assert_allclose(got["jacobian_mean"][r].numpy(), m1.mean(0), rtol=1e-10)
        np.testing.assert_allclose(got["jacobian_var"][r].numpy(), (m2 - m1**2).mean(0),
                                   rtol=1e-9)
        np.testing.assert_allclose(got["jacobian_rel_var"][r].numpy(),
                                   (m2 / m1**2 - 1).mean(0), rtol=1e-9)
        np.testing.assert_allclose(eig[r].numpy(), torch.stack(last).numpy(), rtol=1e-9,
                                   atol=1e-12)


@pytest.mark.parametrize("q", [0.02, 1.0, 9.0])
@pytest.mark.parametrize("name", ["tanh", "gelu", "selu"])
def test_mu_matches_scipy_quad(name, q):
    act = get(name)

    def integrand(z, j):
        d = float(act.dphi(torch.tensor([z], dtype=torch.float64))[0])
        return d ** (2 * j) * math.exp(-z * z / (2 * q)) / math.sqrt(2 * math.pi * q)

    for j in (1, 2):
        s = 30 * math.sqrt(q)
        want = integrate.quad(integrand, -s, 0, args=(j,), epsabs=0, epsrel=1e-12)[0] + \
            integrate.quad(integrand, 0, s, args=(j,), epsabs=0, epsrel=1e-12)[0]
        assert float(jacobian.mu(act, np.array([q]), j)[0]) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize(("scheme", "slope"), [("orthogonal", 1.0), ("kaiming_normal", 2.0)])
def test_relu_theory_closed_form(scheme, slope):
    """relu: μ_2/μ_1² = 2 at every q, so v^l = l(−s_1) + (l − 1); m_1^l = 2^l (1/2)^(l−1)."""
    spec = small_spec("act=relu", f"scheme={scheme}", "scheme.gain=1.4142135623730951",
                      "depth=7", "width=16", "jacobian=1", "input_var=0.3")
    p = predict(spec)
    layers = np.arange(1, 8)
    np.testing.assert_allclose(p["jacobian_rel_var"], slope * layers - 1, rtol=1e-12)
    np.testing.assert_allclose(p["jacobian_mean"], 2.0, rtol=1e-12)
    np.testing.assert_allclose(p["jacobian_var"], 4.0 * (slope * layers - 1), rtol=1e-12)


def test_rectangular_layers_have_a_mean_but_no_variance_prediction():
    spec = small_spec("act=relu", "scheme=kaiming_normal", "depth=2", "widths=[8,16,4]",
                      "jacobian=1")
    p = predict(spec)
    # m_1^2 = n_2 Var W² · μ_1 · n_1 Var W¹ = (4·2/16)(1/2)(16·2/8)
    np.testing.assert_allclose(p["jacobian_mean"], [16 * 2 / 8, 4 * 2 / 16 * 0.5 * 16 * 2 / 8])
    assert np.isnan(p["jacobian_rel_var"]).all() and np.isnan(p["jacobian_var"]).all()


def test_orthogonal_linear_network_is_an_exact_isometry():
    spec = small_spec("act=linear", "scheme=orthogonal", "scheme.gain=1.3", "depth=6",
                      "width=12", "batch=2", "jacobian=2", "replicates=3", "dtype=float64")
    m = measure(spec, progress=False)
    p = predict(spec)
    want = np.broadcast_to(1.3 ** (2 * np.arange(1, 7)), (3, 6))
    np.testing.assert_allclose(m.values["jacobian_mean"], want, rtol=1e-12)
    np.testing.assert_allclose(m.values["jacobian_rel_var"], 0.0, atol=1e-12)
    # the prediction sums one float64 term per layer (μ_2/μ_1² − 1 ≈ 0 for φ = id, each from a
    # quadrature rounded to a few ulps): the sum is zero up to ~depth·eps, not exactly
    eps = np.finfo(np.float64).eps
    np.testing.assert_allclose(p["jacobian_rel_var"], 0.0, atol=4 * spec.depth * eps)
    np.testing.assert_allclose(m.info["jacobian_spectrum"], 1.3**12, rtol=1e-10)


def test_relu_gaussian_mean_squared_singular_value_is_exact_at_any_width():
    """E[m_1^l] = 2 for relu at σ_w² = 2 (He, Gaussian) at width 24: replicate mean ± se."""
    R = 400
    spec = small_spec("act=relu", "scheme=kaiming_normal", "depth=6", "width=24", "batch=1",
                      "jacobian=1", f"replicates={R}", "dtype=float64")
    m1 = measure(spec, progress=False).values["jacobian_mean"]
    theory = predict(spec)["jacobian_mean"]
    z = float(stats.norm.isf(ALPHA / (2 * m1.shape[1])))
    mean, se = m1.mean(0), m1.std(0, ddof=1) / math.sqrt(R)
    assert (np.abs(mean - theory) <= z * se).all(), (mean, se, theory)
    # and the check can fail: the same data against a 10% different prediction
    assert not (np.abs(mean - 1.1 * theory) <= z * se).all()


def test_jacobian_is_the_same_whatever_the_chunking():
    base = ("act=tanh", "depth=5", "width=16", "batch=3", "jacobian=2", "replicates=5")
    whole = measure(small_spec(*base), progress=False)
    budget = 1.5 * bytes_per_replicate(small_spec(*base)) / 2**20  # chunks of one replicate
    chunked = measure(small_spec(*base, f"memory_budget_mb={budget}"), progress=False)
    assert chunked.chunk_size < whole.chunk_size
    for q in jacobian.QUANTITIES:
        np.testing.assert_array_equal(whole.values[q], chunked.values[q])
    np.testing.assert_array_equal(whole.info["jacobian_spectrum"],
                                  chunked.info["jacobian_spectrum"])


def test_run_writes_the_spectrum_and_the_quantities(tmp_path):
    from harness.cli import compose_config

    cfg = compose_config(["act=tanh", "depth=4", "width=8", "batch=3", "jacobian=2",
                          "replicates=2", "plot=true", "progress=false"])
    res = execute(cfg, tmp_path, echo=False)
    assert set(jacobian.QUANTITIES) <= set(res.frame["quantity"])
    spec_df = pd.read_parquet(tmp_path / JACOBIAN)
    assert len(spec_df) == 2 * 2 * 8 and (spec_df["jacobian"] == 2).all()
    assert (spec_df.groupby(["replicate", "input"])["index"].nunique() == 8).all()
    assert (tmp_path / "variance.png").stat().st_size > 10_000


def test_without_jacobian_nothing_extra_is_measured_or_written(tmp_path):
    from harness.cli import compose_config

    res = execute(compose_config(["depth=3", "width=8", "batch=2", "replicates=2", "plot=false",
                                  "progress=false"]), tmp_path, echo=False)
    assert not set(jacobian.QUANTITIES) & set(res.frame["quantity"])
    assert not (tmp_path / JACOBIAN).exists()


@pytest.mark.parametrize(("args", "message"), [
    (["jacobian=-1"], "jacobian must be an integer in [0, batch=256]"),
    (["jacobian=true"], "jacobian must be an integer in [0, batch=256]"),
    (["batch=4", "jacobian=5"], "jacobian must be an integer in [0, batch=4]"),
    (["arch=resconv", "jacobian=1"], "jacobian is implemented for arch=mlp, arch=conv, arch=resmlp only"),
])
def test_bad_jacobian_is_a_one_line_error(args, message, capsys):
    expect_one_line_error(args, message, capsys)
