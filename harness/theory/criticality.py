"""Fixed points, criticality and depth scales of the mean-field maps (Poole et al. 2016,
Schoenholz et al. 2017), for square layers with constant σ_w², σ_b²:

    length map        q ↦ f(q) = σ_w² V_φ(q) + σ_b²;        q* = f(q*)
    χ_1               = σ_w² D_φ(q*)                         (per-layer gradient factor)
    ξ_q               = −1/ln(σ_w² E[φ'(z)² + φ(z)φ''(z)]) = −1/ln f'(q*),   z ~ N(0, q*)
    correlation map   c ↦ (σ_w² C_φ(q*, c) + σ_b²)/q*;       c* its largest stable fixed point
    ξ_c               = −1/ln(σ_w² E[φ'(u_1)φ'(u_2)])  at c*   (= −1/ln χ_1 when c* = 1)

q* is the fixed point the run's own first layer q¹ = σ_w,1² q_0 + σ_b² flows to: the length map
is increasing, so iterating it from q¹ moves monotonically to the nearest root of f(q) = q in
the direction of g(q¹) = f(q¹) − q¹; that root is bracketed by doubling (or halving) and found
by bisection to ~1e-15 relative. If no root exists above q¹ the length map diverges (relu with
σ_w² > 2: q* "n/a"; χ_1 is still reported where D_φ does not depend on q); if none exists
below and f(0) = 0 the signal dies, q* = 0. For the relu family at σ_w² D_φ = 1 without bias
every q is a fixed point ("neutral"): q* = q¹. c*: 1 in the ordered phase (χ_1 < 1); in the
chaotic phase (χ_1 > 1) c = 1 is unstable and c* is the largest root of the correlation map
below 1 (found by scanning down from 1 and bisection); undefined when q* = 0 or diverges.
Depth scales are ∞ at criticality (χ = 1) and "n/a" where the fixed point is unstable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from harness import archs
from harness.core.activations import Activation
from harness.core.capabilities import CRITICALITY
from harness.core.init import fans, scheme
from harness.core.spec import Spec

Q_MAX = 1e6  # beyond this the length map is taken to diverge (the quadrature's range is q ≤ 1e4)
CRITICAL_TOL = 1e-10  # |χ − 1| below this counts as critical


@dataclass(frozen=True)
class Criticality:
    """q*, χ_1, ξ_q, c*, ξ_c of one (φ, σ_w², σ_b²); None = undefined ("n/a"), inf = ∞."""

    sigma_w2: float | None
    sigma_b2: float | None
    q_star: float | None
    chi_1: float | None
    xi_q: float | None
    c_star: float | None
    xi_c: float | None
    phase: str  # ordered | chaotic | critical | n/a
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: ∞ as the string "inf", undefined as None."""
        return {k: ("inf" if isinstance(v, float) and math.isinf(v) else v)
                for k, v in asdict(self).items()}


def _root(g: Callable[[float], float], lo: float, hi: float, *, xtol: float,
          iters: int = 200) -> float:
    """A root of g in [lo, hi] where g(lo), g(hi) differ in sign (or one is 0): the Illinois
    variant of regula falsi (superlinear on smooth g), bisecting whenever it stalls; stops when
    the bracket is narrower than xtol."""
    glo, ghi = g(lo), g(hi)
    if glo == 0.0:
        return lo
    if ghi == 0.0:
        return hi
    side = 0
    for i in range(iters):
        if hi - lo <= xtol:
            break
        x = hi - ghi * (hi - lo) / (ghi - glo) if i % 4 != 3 else 0.5 * (lo + hi)
        if not lo < x < hi:
            x = 0.5 * (lo + hi)
        gx = g(x)
        if gx == 0.0:
            return x
        if (gx > 0) == (ghi > 0):  # x replaces hi
            hi, ghi = x, gx
            if side == -1:
                glo *= 0.5
            side = -1
        else:
            lo, glo = x, gx
            if side == 1:
                ghi *= 0.5
            side = 1
    return lo if abs(glo) < abs(ghi) else hi


def fixed_point(
    act: Activation, sigma_w2: float, sigma_b2: float, q_start: float
) -> tuple[float | None, str]:
    """(q*, note): the fixed point of q ↦ σ_w² V_φ(q) + σ_b² that iteration from q_start reaches;
    None if the map diverges."""

    def g(q: float) -> float:
        return float(sigma_w2 * act.V(q) + sigma_b2 - q)

    q1 = float(q_start)
    g1 = g(q1)
    if abs(g1) <= 1e-13 * max(q1, 1e-300):
        neutral = all(abs(g(q1 * k)) <= 1e-13 * q1 * k for k in (0.5, 2.0))
        return q1, ("neutral: every q is a fixed point, q* = q¹" if neutral else "")
    if g1 > 0:  # q grows: the nearest root above
        lo, hi = q1, max(2.0 * q1, 1e-300)
        while g(hi) > 0:
            lo, hi = hi, 2.0 * hi
            if hi > Q_MAX:
                return None, "q grows without bound: no finite fixed point"
        return _root(g, lo, hi, xtol=1e-15 * hi), ""
    dies = g(0.0) <= 0.0  # f(0) = 0: φ(0) = 0 and no bias
    lo, hi = 0.5 * q1, q1  # q shrinks: the nearest root below
    while g(lo) < 0:
        lo, hi = 0.5 * lo, lo
        if lo < 1e-10 * q1:
            if dies:  # (a root this close to 0 would be rounding noise of V)
                return 0.0, "the signal dies: q* = 0"
            return _root(g, 0.0, hi, xtol=1e-15 * hi), ""
    return _root(g, lo, hi, xtol=1e-15 * hi), ""


def _depth_scale(chi: float) -> float | None:
    """−1/ln χ: ∞ at χ = 1 (within CRITICAL_TOL), None where χ ≥ 1 (unstable) or χ ≤ 0."""
    if abs(chi - 1.0) <= CRITICAL_TOL:
        return math.inf
    if not 0.0 < chi < 1.0:
        return None
    return -1.0 / math.log(chi)


def correlation_fixed_point(
    act: Activation, sigma_w2: float, sigma_b2: float, q_star: float, chi_1: float
) -> float:
    """c*: 1 unless χ_1 > 1; then the largest root below 1 of (σ_w² C_φ(q*, c) + σ_b²)/q* = c."""
    if chi_1 <= 1.0 + CRITICAL_TOL:
        return 1.0

    def G(c: float) -> float:
        return (sigma_w2 * act.C(q_star, c) + sigma_b2) / q_star - c

    hi, delta = 1.0, 1e-6
    while True:
        lo = max(-1.0, 1.0 - delta)
        if G(lo) >= 0 or lo == -1.0:
            return _root(G, lo, hi, xtol=1e-13) if G(lo) > 0 else lo
        hi, delta = lo, 4.0 * delta


def analyze(act: Activation, sigma_w2: float, sigma_b2: float, q_start: float = 1.0) -> Criticality:
    """Criticality of φ at constant (σ_w², σ_b²), starting the length map at q_start."""
    q, note = fixed_point(act, sigma_w2, sigma_b2, q_start)
    if q is None:
        chi = None
        if act.kind.D_closed is not None:  # D_φ constant (relu family): χ_1 needs no q*
            chi = float(sigma_w2 * act.D(1.0))
            note += "; χ_1 does not depend on q for this activation"
        phase = "n/a" if chi is None else _phase(chi)
        return Criticality(sigma_w2, sigma_b2, None, chi, None, None, None, phase, note)
    chi = float(sigma_w2 * act.D(q))
    xi_q = _depth_scale(float(sigma_w2 * act.V_slope(q)))
    if q == 0.0:
        return Criticality(sigma_w2, sigma_b2, q, chi, xi_q, None, None, _phase(chi),
                           note + "; c* undefined without signal")
    c = correlation_fixed_point(act, sigma_w2, sigma_b2, q, chi)
    chi_c = chi if c == 1.0 else sigma_w2 * act.C_prime(q, c)
    return Criticality(sigma_w2, sigma_b2, q, chi, xi_q, c, _depth_scale(chi_c), _phase(chi), note)


def _phase(chi: float) -> str:
    if abs(chi - 1.0) <= CRITICAL_TOL:
        return "critical"
    return "ordered" if chi < 1.0 else "chaotic"


def for_spec(spec: Spec, weight_variances: Sequence[float] | None = None) -> Criticality:
    """`analyze` for a run, where defined: n_1 = … = n_L, depth ≥ 2, an architecture that
    supports criticality for this run, and σ_w,l² equal for l = 2..L (the first layer only sets
    q¹); otherwise every entry "n/a" with the reason."""

    def na(reason: str) -> Criticality:
        return Criticality(None, None, None, None, None, None, None, "n/a", reason)

    if spec.depth < 2:
        return na("depth 1 has no layer-to-layer map")
    if len(set(spec.widths[1:])) != 1:
        return na("defined for square layers n_1 = … = n_L only")
    reason = archs.why_not(spec, CRITICALITY)  # the architecture's (conv: circular padding only)
    if reason:
        return na(reason)
    var_w = np.asarray(spec.weight_variances() if weight_variances is None else weight_variances)
    fan_in = np.array([fans(s)[0] for s in spec.weight_shapes], dtype=np.float64)
    s2 = fan_in * var_w
    if not np.allclose(s2[1:], s2[1], rtol=1e-9, atol=0):
        return na("σ_w² differs across layers" + (f" ({spec.scheme}'s data-dependent scales)"
                                                 if scheme(spec.scheme).calibrates_on_data else ""))
    b2 = spec.bias_std**2
    q1 = float(s2[0] * spec.input_var + b2)
    return analyze(spec.activation, float(s2[1]), b2, q1)


def fmt(v: float | None, digits: int = 4) -> str:
    """A value for people: "n/a" for None, "∞" for inf."""
    if v is None:
        return "n/a"
    if math.isinf(v):
        return "∞"
    return "0" if abs(v) < 1e-12 else f"{v:.{digits}g}"


def describe(c: Criticality, short: bool = False) -> str:
    """One line: q*, χ_1 (with the phase), ξ_q, c*, ξ_c, and (unless short) σ's and the note."""
    if c.sigma_w2 is None:
        return f"criticality: n/a ({c.note})"
    phase = {"critical": "edge of chaos", "n/a": "n/a"}.get(c.phase, c.phase)
    values = (f"q* = {fmt(c.q_star)}, χ_1 = {fmt(c.chi_1)} ({phase}), ξ_q = {fmt(c.xi_q)}, "
              f"c* = {fmt(c.c_star)}, ξ_c = {fmt(c.xi_c)}")
    if short:
        return values
    note = c.note.strip("; ")
    return (f"criticality (σ_w² = {c.sigma_w2:.4g}, σ_b² = {c.sigma_b2:.4g}): {values}"
            + (f"; {note}" if note else ""))
