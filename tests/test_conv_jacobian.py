"""`jacobian=k` for arch=conv (`harness.archs.conv.propagate_jacobian`): the whole C·P × C_0·P
Jacobian J^l = ∂h^l/∂x^0 against autograd on the reference network (float64), an exact
isometry, and the theory's domain (circular padding only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.sim import jacobian, reference
from harness.sim.runner import measure, replicate_generators, sample_chunk
from harness.theory.meanfield import predict
from tests.conftest import small_spec

BASE = ("arch=conv", "depth=3", "width=4", "batch=3", "jacobian=2", "replicates=2",
        "dtype=float64", "progress=false")


@pytest.mark.parametrize("overrides", [
    ("act=tanh", "scheme=kaiming_normal", "bias_std=0.1", "image=4", "padding_mode=circular"),
    ("act=tanh", "scheme=delta_orthogonal", "conv_dim=1", "image=6", "padding_mode=zeros"),
    ("act=relu", "scheme=kaiming_uniform", "image=3", "kernel=3", "widths=[2,4,3,5]"),
])
def test_conv_jacobian_equals_autograd(overrides):
    """jacobian_* (R, L) and the last layer's spectrum equal autograd's, input by input, for the
    runner's own networks (its replicate streams)."""
    spec = small_spec(*BASE, *overrides)
    m = measure(spec, progress=False)
    R, k, L = spec.replicates, spec.jacobian, spec.depth
    weights, biases, x0, _ = sample_chunk(spec, R, replicate_generators(spec, 0, R))
    for r in range(R):
        net = reference.member(spec, weights, biases, r)
        m1, v = np.zeros(L), np.zeros(L)
        for b in range(k):
            x = x0[r, b]
            for l in range(1, L + 1):
                J = torch.autograd.functional.jacobian(
                    lambda u, sub=net[: 2 * l - 1]: sub(u[None]).flatten(), x)
                J = J.reshape(-1, x.numel())
                a, c = jacobian.moments(J)
                m1[l - 1] += float(a) / k
                v[l - 1] += float(c / a**2 - 1) / k
                if l == L:
                    eig = torch.linalg.eigvalsh(J.T @ J).clamp_min(0).numpy()
                    np.testing.assert_allclose(m.info["jacobian_spectrum"][r, b], eig,
                                               rtol=1e-8, atol=1e-12 * eig.max())
        np.testing.assert_allclose(m.values["jacobian_mean"][r], m1, rtol=1e-10)
        np.testing.assert_allclose(m.values["jacobian_rel_var"][r], v, rtol=1e-8, atol=1e-12)


def test_delta_orthogonal_linear_conv_is_an_exact_isometry():
    """φ = id with delta-orthogonal kernels: J^l = g^l times an orthogonal matrix at every
    position, so every λ = g^{2l}; the theory (s_1 = 0, μ_2/μ_1² = 1) says the same."""
    spec = small_spec(*BASE, "act=linear", "scheme=delta_orthogonal", "scheme.gain=1.3",
                      "image=4", "padding_mode=circular")
    m = measure(spec, progress=False)
    want = 1.3 ** (2 * np.arange(1, spec.depth + 1))
    np.testing.assert_allclose(m.values["jacobian_mean"], np.broadcast_to(want, (2, 3)), rtol=1e-12)
    np.testing.assert_allclose(m.values["jacobian_rel_var"], 0.0, atol=1e-12)
    np.testing.assert_allclose(m.info["jacobian_spectrum"], want[-1], rtol=1e-10)
    p = predict(spec)
    np.testing.assert_allclose(p["jacobian_mean"], want, rtol=1e-12)
    eps = np.finfo(np.float64).eps  # a sum of one quadrature-rounded term per layer
    np.testing.assert_allclose(p["jacobian_rel_var"], 0.0, atol=4 * spec.depth * eps)


def test_zero_padding_has_no_jacobian_theory():
    """With zero padding the border's maps differ from the interior's: no theory (NaN)."""
    p = predict(small_spec(*BASE, "act=tanh", "image=4", "padding_mode=zeros"))
    assert all(np.isnan(p[q]).all() for q in jacobian.QUANTITIES)
    assert np.isfinite(p["forward"]).all()
