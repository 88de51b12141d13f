"""Mean-field predictions for the quantities the runner measures (THEORY.md).

With σ_w,l² = n_{l-1}·Var(W^l) from `Spec.weight_variances` (the sampler's own function):

    q^1       = σ_w,1² q_0 + σ_b²
    q^{l+1}   = σ_w,l+1² V_φ(q^l) + σ_b²                        forward     (layer l: q^l)
    a^l       = V_φ(q^l),  l < L                                activation
    g^L       = 1,  g^l = D_φ(q^l) · n_{l+1} Var(W^{l+1}) · g^{l+1}   backward
    w^l       = g^l · E[(x^{l-1})²],  E[(x^0)²] = q_0,  E[(x^l)²] = V_φ(q^l)   weight_grad

The backward line is the gradient-independence approximation; it is exact for relu-family and
linear networks' expectations. Conv stacks (arch=conv) follow the position-resolved recursions
of `harness.conv_theory`.
"""

from __future__ import annotations

import numpy as np

from . import conv_theory
from .init import fans
from .spec import Spec


def sigma_w2(spec: Spec) -> np.ndarray:
    """σ_w,l² = fan_in_l · Var(W^l), l = 1..L (fan_in = C_in·∏k for a conv weight)."""
    fan_in = np.array([fans(s)[0] for s in spec.weight_shapes], dtype=np.float64)
    return fan_in * np.array(spec.weight_variances())


def predict(spec: Spec) -> dict[str, np.ndarray]:
    """quantity -> prediction per layer l = 1..L (activation: l = 1..L-1), float64."""
    if spec.is_conv:
        return conv_theory.predict(spec)
    act = spec.activation
    L = spec.depth
    var_w = np.array(spec.weight_variances())
    s2 = sigma_w2(spec)
    b2 = spec.bias_std**2
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        q = np.empty(L)
        x2 = np.empty(L)  # E[(x^{l-1})²]
        x2[0] = spec.input_var
        q[0] = s2[0] * spec.input_var + b2
        for l in range(1, L):
            x2[l] = act.V(q[l - 1])
            q[l] = s2[l] * x2[l] + b2
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
        }
