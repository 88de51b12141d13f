"""Mean-field predictions for the quantities the runner measures.

`predict` asks the run's architecture (`harness.archs`); the dense recursions below (`dense`)
are the MLP's.

With σ_w,l² = n_{l-1}·Var(W^l) from `Spec.weight_variances` (the sampler's own function):

    q^1       = σ_w,1² q_0 + σ_b²
    q^{l+1}   = σ_w,l+1² V_φ(q^l) + σ_b²                        forward     (layer l: q^l)
    a^l       = V_φ(q^l),  l < L                                activation
    g^L       = 1,  g^l = D_φ(q^l) · n_{l+1} Var(W^{l+1}) · g^{l+1}   backward
    w^l       = g^l · E[(x^{l-1})²],  E[(x^0)²] = q_0,  E[(x^l)²] = V_φ(q^l)   weight_grad
    q_12^1    = σ_w,1² q_0 c_0 + σ_b²,   q_12^{l+1} = σ_w,l+1² C_φ(q^l, c^l) + σ_b²
    c^l       = q_12^l / q^l                                      correlation

with c_0 = input_corr and C_φ(q, c) = E[φ(u_1)φ(u_2)], (u_1, u_2) ~ N(0, q[[1, c], [c, 1]])
(the correlation map of Poole et al. 2016; closed-form arc-cosine kernel for the relu family,
2-D quadrature otherwise). The backward line is the gradient-independence approximation; it is
exact for relu-family and linear networks' expectations. The measured correlation is a mean of
cosines, whose expectation differs from c^l by O(1/n) (`harness.theory.nlo_pair`). With
jacobian=k the Jacobian's spectrum moments follow `harness.sim.jacobian.predict` (free
probability). Conv stacks (arch=conv) follow the position-resolved recursions of
`harness.archs.conv`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from harness.core.activations import Activation
from harness.core.init import fans
from harness.core.quadrature import gaussian_expectation

if TYPE_CHECKING:  # type hints only: the MLP's registry entry uses `dense`, and Spec the registry
    from harness.core.spec import Spec


def sigma_w2(spec: Spec) -> np.ndarray:
    """σ_w,l² = fan_in_l · Var(W^l), l = 1..L (fan_in = C_in·∏k for a conv weight)."""
    fan_in = np.array([fans(s)[0] for s in spec.weight_shapes], dtype=np.float64)
    return fan_in * np.array(spec.weight_variances())


def mean_phi(act: Activation, q: float | np.ndarray) -> np.ndarray:
    """M_φ(q) = E φ(√q z), z ~ N(0, 1), by quadrature. With ws=true every row of a weight sums to
    zero, which removes φ's mean: the forward maps use V_φ − M_φ² and C_φ − M_φ²."""
    return gaussian_expectation(act.phi, q)


def correlation_map(
    act: Activation, s2: np.ndarray, q: np.ndarray, b2: float, q0: float, c0: float,
    centred: bool = False,
) -> np.ndarray:
    """c^l, l = 1..L, from c^0 = c0: q_12^1 = σ_w,1² q_0 c_0 + σ_b², q_12^{l+1} = σ_w,l+1²
    C_φ(q^l, c^l) + σ_b², c^l = q_12^l / q^l (q^l the forward prediction). nan once q^l is not
    a finite positive number."""
    L = len(q)
    c = np.full(L, np.nan)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        q12 = s2[0] * q0 * c0 + b2
        for l in range(L):
            if not (np.isfinite(q[l]) and q[l] > 0 and np.isfinite(q12)):
                break
            c[l] = min(1.0, max(-1.0, q12 / q[l]))
            if l + 1 < L:
                cov = act.C(float(q[l]), float(c[l]))
                if centred:  # ws=true: C_φ − M_φ²
                    cov -= float(mean_phi(act, float(q[l]))) ** 2
                q12 = s2[l + 1] * cov + b2
    return c


def predict(
    spec: Spec, weight_variances: Sequence[float] | None = None
) -> dict[str, np.ndarray]:
    """quantity -> prediction per layer l = 1..L (activation: l = 1..L-1), float64, from the
    run's architecture (`harness.archs.base.Architecture.predict`).

    `weight_variances` replaces the scheme's Var(W^l) (lsuv: the realized, data-dependent ones).
    """
    return spec.architecture.predict(spec, weight_variances)


def dense(
    spec: Spec, weight_variances: Sequence[float] | None = None
) -> dict[str, np.ndarray]:
    """The dense recursions of the module doc for an MLP: forward, activation, backward,
    weight_grad and correlation per layer, float64 (`weight_variances` as in `predict`)."""
    act = spec.activation
    L = spec.depth
    var_w = np.array(spec.weight_variances() if weight_variances is None else weight_variances,
                     dtype=np.float64)
    fan_in = np.array([s[1] for s in spec.weight_shapes], dtype=np.float64)
    s2 = fan_in * var_w
    b2 = spec.bias_std**2
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        q = np.empty(L)
        x2 = np.empty(L)  # E[(x^{l-1})²]
        x2[0] = spec.input_var
        q[0] = s2[0] * spec.input_var + b2
        for l in range(1, L):
            x2[l] = act.V(q[l - 1])
            centre = float(mean_phi(act, q[l - 1])) ** 2 if spec.ws else 0.0  # ws: V_φ − M_φ²
            q[l] = s2[l] * (x2[l] - centre) + b2
        D = act.D(q[:-1]) if L > 1 else np.empty(0)
        g = np.empty(L)
        g[-1] = 1.0
        rows = np.array([s[0] for s in spec.weight_shapes], dtype=np.float64)
        for l in range(L - 2, -1, -1):
            g[l] = D[l] * rows[l + 1] * var_w[l + 1] * g[l + 1]
        return {
            "forward": q,
            "activation": x2[1:].copy(),
            "backward": g,
            "weight_grad": g * x2,
            "correlation": correlation_map(act, s2, q, b2, spec.input_var, spec.input_corr,
                                           centred=spec.ws),
        }
