"""Gaussian expectations by graded composite Gauss–Legendre quadrature.

    E_{z ~ N(0, q)}[f(z)] = ∫ f(√q·u) ϕ(u) du,   ϕ the standard normal density.

The integral is split at u = 0 (where relu, elu and selu have their kinks) and each half is cut
into panels graded geometrically toward 0: [0, c], [c, 2c], [2c, 4c], … up to u = U_MAX, with
c = C0 / max(1, √q). Every activation in the registry is analytic off the imaginary axis of u
(tanh, sigmoid, softplus and silu have their poles there, at distance ~1/√q from 0), so
geometric grading toward 0 gives each panel a singularity at least one panel-length away and
Gauss–Legendre converges geometrically on all of them. With N_NODES nodes per panel the result
is accurate to ~1e-13 relative for q up to 1e4 (tests check 1e-10 against scipy's adaptive
quad). The tail beyond U_MAX = 12 weighs ϕ(12) ≈ 2e-32 and is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache, lru_cache

import numpy as np
import torch

U_MAX = 12.0
C0 = 0.125
N_NODES = 24

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@cache
def _legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(n)


@lru_cache(maxsize=4096)
def _half_line_rule(c: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes u > 0 and weights w (including ϕ(u)) on [0, U_MAX], panels graded from width c."""
    edges = [0.0, c]
    while edges[-1] < U_MAX:
        edges.append(min(2.0 * edges[-1], U_MAX))
    x, w = _legendre(N_NODES)
    lo = np.asarray(edges[:-1])[:, None]
    hi = np.asarray(edges[1:])[:, None]
    u = (0.5 * (hi - lo) * x + 0.5 * (hi + lo)).ravel()
    weights = (0.5 * (hi - lo) * w).ravel() * _INV_SQRT_2PI * np.exp(-0.5 * u * u)
    return u, weights


def gaussian_rule(q: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes z and weights w with Σ w·f(z) ≈ E_{z~N(0,q)}[f(z)] for q > 0 (both halves)."""
    c = C0 / max(1.0, math.sqrt(q))
    # round the panel scale to a power of 2 so that the cache is reused across nearby q
    c = 2.0 ** math.floor(math.log2(c))
    u, w = _half_line_rule(c)
    s = math.sqrt(q)
    return np.concatenate([-s * u[::-1], s * u]), np.concatenate([w[::-1], w])


def gaussian_expectation(
    f: Callable[[torch.Tensor], torch.Tensor], q: float | np.ndarray
) -> np.ndarray:
    """E_{z~N(0,q)}[f(z)] for each q (float64; f takes and returns a float64 tensor).

    q = 0 gives f(0); q = inf gives the limit ½f(+∞) + ½f(−∞); a negative or nan q gives nan.
    """
    qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
    out = np.empty_like(qs)
    for i, qi in enumerate(qs.ravel()):
        if qi == 0.0:
            out.flat[i] = float(f(torch.zeros(1, dtype=torch.float64))[0])
        elif qi == math.inf:  # the limit ½ f(+∞) + ½ f(−∞), through huge finite points
            ends = f(torch.tensor([1e300, -1e300], dtype=torch.float64))
            out.flat[i] = 0.5 * float(ends[0] + ends[1])
        elif not qi > 0.0:
            out.flat[i] = math.nan
        else:
            z, w = gaussian_rule(float(qi))
            fz = f(torch.from_numpy(z)).numpy()
            out.flat[i] = float(np.dot(w, fz))
    return out.reshape(np.shape(q))
