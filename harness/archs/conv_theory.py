"""Position-resolved mean-field theory of a conv stack (docs/theory.md, "Conv stacks").

Layer l's weight W^l (C_l, C_{l-1}, *k) has tap variances v^l_t = E[W^l[:, :, t]²]
(`Spec.tap_variances`: Var(W) at every tap, or for delta_orthogonal g²/C_l at the centre and 0
elsewhere). With 1[·] the indicator that a position lies inside the image (always true for
circular padding, where positions wrap), the infinite-channel recursions per position p are

    q^1(p)     = σ_b² + Σ_t C_0 v^1_t 1[p+t] q_0
    q^{l+1}(p) = σ_b² + Σ_t C_l v^{l+1}_t 1[p+t] V_φ(q^l(p+t))                   forward
    g^L(p)     = 1
    g^l(p)     = D_φ(q^l(p)) · Σ_t C_{l+1} v^{l+1}_t 1[p−t] g^{l+1}(p−t)          backward

(δ^l(p) = φ'(h^l(p)) Σ_t W^{l+1}[:, :, t]ᵀ δ^{l+1}(p−t), under the gradient-independence
assumption). For i.i.d. taps C_{l-1} v^l_t = σ_w,l²/∏k with σ_w,l² = fan_in·Var(W^l), so with
circular padding every position follows the MLP recursion with σ_w² = fan_in·Var(W) forward
and fan_out·Var(W) backward; with zero padding the border loses the taps that fall outside.

The per-example weight gradient ∂loss/∂W^l[o, i, t] = Σ_p δ^l_o(p) x^{l-1}_i(p+t) sums over
positions. Under gradient independence the cross-position terms vanish in expectation, so

    E[(∂loss/∂W^l[o, i, t])²] = Σ_p g^l(p) · 1[p+t] E[x^{l-1}(p+t)²],   E[x^0²] = q_0,
                                                                          E[x^l²] = V_φ(q^l),

and `weight_grad` is its mean over taps t (not the MLP's product: it carries a factor of the
number of positions). The pooled `forward`, `activation`, `backward` predictions are the means
over positions of the maps. `channel_mean_sq` and `channel_var` have no theory here (NaN): they
need the cross-input and cross-position covariance maps, not only the variances.
"""

from __future__ import annotations

import itertools

import numpy as np

from harness.core.activations import Activation
from harness.core.spec import Spec


def window_sum(a: np.ndarray, taps: np.ndarray, padding_mode: str, sign: int = 1) -> np.ndarray:
    """Σ_t taps[t] · a(p + sign·t) at every position p (t the centred offsets of an odd kernel),
    with a = 0 outside the image (zeros) or wrapped (circular); same shape as a."""
    r = [(k - 1) // 2 for k in taps.shape]
    mode = "wrap" if padding_mode == "circular" else "constant"
    padded = np.pad(a, [(ri, ri) for ri in r], mode=mode)
    out = np.zeros_like(a, dtype=np.float64)
    for idx in itertools.product(*(range(k) for k in taps.shape)):
        w = taps[idx]
        if w == 0.0:
            continue
        sl = tuple(
            slice(ri + sign * (j - ri), ri + sign * (j - ri) + n)
            for j, ri, n in zip(idx, r, a.shape, strict=True)
        )
        out += w * padded[sl]
    return out


def _moment(f, q: np.ndarray) -> np.ndarray:
    """f (Activation.V or .D) at every entry of q, each distinct value evaluated once."""
    uniq, inv = np.unique(q, return_inverse=True)
    return np.asarray(f(uniq), dtype=np.float64)[inv.reshape(q.shape)]


def position_maps(spec: Spec) -> dict[str, np.ndarray]:
    """The position-resolved maps, arrays (L, *S) for l = 1..L:

    forward q^l(p), input E[(x^{l-1}(p))²] (x2), backward g^l(p), and weight_grad (L,)
    (mean over taps of Σ_p g^l(p) 1[p+t] E[x^{l-1}(p+t)²]).
    """
    act: Activation = spec.activation
    L, S, mode = spec.depth, spec.spatial, spec.padding_mode
    taps = spec.tap_variances()
    C = spec.widths
    b2 = spec.bias_std**2
    q = np.empty((L, *S))
    x2 = np.empty((L, *S))  # E[(x^{l-1}(p))²]
    g = np.empty((L, *S))
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        x2[0] = spec.input_var
        for l in range(L):
            if l > 0:
                x2[l] = _moment(act.V, q[l - 1])
            q[l] = b2 + window_sum(x2[l], C[l] * taps[l], mode)
        g[L - 1] = 1.0
        for l in range(L - 2, -1, -1):
            g[l] = _moment(act.D, q[l]) * window_sum(g[l + 1], C[l + 2] * taps[l + 1], mode, -1)
        uniform = np.full(taps[0].shape, 1.0 / taps[0].size)
        wg = np.array([(g[l] * window_sum(x2[l], uniform, mode)).sum() for l in range(L)])
    return {"forward": q, "x2": x2, "backward": g, "weight_grad": wg}


def predict(spec: Spec) -> dict[str, np.ndarray]:
    """quantity -> prediction per layer l = 1..L (activation: l = 1..L-1), float64; the pooled
    forward, activation and backward are the position means of the maps."""
    maps = position_maps(spec)
    axes = tuple(range(1, 1 + len(spec.spatial)))
    nan = np.full(spec.depth, np.nan)
    return {
        "forward": maps["forward"].mean(axes),
        "activation": maps["x2"][1:].mean(axes),
        "backward": maps["backward"].mean(axes),
        "weight_grad": maps["weight_grad"],
        "channel_mean_sq": nan,
        "channel_var": nan.copy(),
    }
