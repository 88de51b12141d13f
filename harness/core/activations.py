"""The activation registry: one entry per activation holds everything about it.

Each entry has the torch function φ, its first and second derivatives φ', φ'', the Gaussian
moments

    V_φ(q) = E_{z~N(0,q)}[φ(z)²]        D_φ(q) = E_{z~N(0,q)}[φ'(z)²]
    V_φ'(q) = dV_φ/dq = E[φ'(z)² + φ(z)φ''(z)]             (Stein's lemma)
    C_φ(q, c) = E[φ(u_1)φ(u_2)]      C'_φ(q, c) = E[φ'(u_1)φ'(u_2)],
                (u_1, u_2) ~ N(0, q [[1, c], [c, 1]])

in closed form where one exists (linear, relu, leaky_relu: V, D and the arc-cosine kernel C)
and by quadrature otherwise (`harness.core.quadrature`: 1-D accurate to 1e-10 relative for q ≤ 100,
2-D to ~1e-10 absolute on the scale of V), and the name under which
`torch.nn.init.calculate_gain` knows it (None where torch has no gain for it). φ, φ' and φ''
are written once, in torch, and serve both the runner (on the device, any dtype) and the
theory (float64 quadrature nodes on the CPU), so the two cannot drift apart. Where φ' jumps
(relu, leaky_relu, elu with α ≠ 1, selu: all at 0, where φ(0) = 0) φ'' is the pointwise
derivative; the jump's delta term is multiplied by φ(0) = 0 in V_φ' and drops out.

    >>> act = get("leaky_relu", negative_slope=0.1)
    >>> float(act.V(2.0))     # q (1 + a²) / 2
    1.01
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harness.core.quadrature import gaussian_expectation, gaussian_expectation_2d

Fn = Callable[..., torch.Tensor]
Moment = Callable[..., Any]

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class ActivationKind:
    """A registry entry: φ(x, **p), φ'(x, **p), φ''(x, **p), optional closed-form V(q, **p),
    D(q, **p) and C(q, c, **p) = E[φ(u_1)φ(u_2)]."""

    name: str
    phi: Fn
    dphi: Fn
    ddphi: Fn
    V_closed: Moment | None = None
    D_closed: Moment | None = None
    C_closed: Moment | None = None
    gain_name: str | None = None
    defaults: Mapping[str, float] = field(default_factory=dict)
    doc: str = ""
    #: φ in place (overwrites its argument), where torch has it; saves the runner an allocation
    phi_: Fn | None = None
    #: torch's fused backward kernel, f(δ, saved, out, **p) writing δ ⊙ φ'(h) into out, where
    #: saved is φ(h) if `saves_output(**p)` else h (None: δ ⊙ dphi(h))
    backward: Callable[..., torch.Tensor] | None = None
    #: whether `backward` reads φ's output (then φ may run in place); a function of the params
    saves_output: Callable[..., bool] = lambda **p: False


@dataclass(frozen=True)
class Activation:
    """An activation bound to its parameters (e.g. leaky_relu's negative_slope)."""

    kind: ActivationKind
    params: Mapping[str, float]

    @property
    def name(self) -> str:
        return self.kind.name

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x), elementwise."""
        return self.kind.phi(x, **self.params)

    def dphi(self, x: torch.Tensor) -> torch.Tensor:
        """φ'(x), elementwise (the derivative autograd would use)."""
        return self.kind.dphi(x, **self.params)

    def phi_(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x), in place where torch has an in-place form (x is then overwritten)."""
        if self.kind.phi_ is not None:
            return self.kind.phi_(x, **self.params)
        return self.phi(x)

    @property
    def saves_output(self) -> bool:
        """True if `backward_` wants φ(h) (φ then runs in place on h), False if it wants h."""
        return bool(self.kind.saves_output(**self.params))

    def backward_(self, delta: torch.Tensor, saved: torch.Tensor) -> torch.Tensor:
        """δ ← δ ⊙ φ'(h) in place, `saved` = φ(h) if `saves_output` else h: torch's own fused
        backward kernel (one pass, no φ' tensor), or δ·dphi(h) where torch has none."""
        if self.kind.backward is not None:
            return self.kind.backward(delta, saved, delta, **self.params)
        return delta.mul_(self.dphi(saved))

    def V(self, q: float | np.ndarray) -> np.ndarray:
        """V_φ(q) = E_{z~N(0,q)}[φ(z)²]."""
        if self.kind.V_closed is not None:
            return np.asarray(self.kind.V_closed(np.asarray(q, dtype=np.float64), **self.params))
        return gaussian_expectation(lambda z: self.phi(z) ** 2, q)

    def D(self, q: float | np.ndarray) -> np.ndarray:
        """D_φ(q) = E_{z~N(0,q)}[φ'(z)²]."""
        if self.kind.D_closed is not None:
            qa = np.asarray(q, dtype=np.float64)
            return np.broadcast_to(self.kind.D_closed(qa, **self.params), qa.shape).copy()
        return gaussian_expectation(lambda z: self.dphi(z) ** 2, q)

    def ddphi(self, x: torch.Tensor) -> torch.Tensor:
        """φ''(x), elementwise (pointwise derivative of φ'; 0 on the linear pieces)."""
        return self.kind.ddphi(x, **self.params)

    def V_slope(self, q: float | np.ndarray) -> np.ndarray:
        """dV_φ/dq = E_{z~N(0,q)}[φ'(z)² + φ(z)φ''(z)] (the slope of the length map / σ_w²)."""
        return gaussian_expectation(lambda z: self.dphi(z) ** 2 + self.phi(z) * self.ddphi(z), q)

    def C(self, q: float, c: float) -> float:
        """C_φ(q, c) = E[φ(u_1)φ(u_2)], (u_1, u_2) ~ N(0, q[[1, c], [c, 1]]); C(q, 1) = V(q).

        The 2-D quadrature (~5 ms) is cached per (activation, q, c): the runs of a sweep that
        differ only in seed or mode ask for the same values."""
        if self.kind.C_closed is not None:
            return float(self.kind.C_closed(float(q), float(c), **self.params))
        return _C_quadrature(self.name, tuple(self.params.items()), float(q), float(c))

    def C_prime(self, q: float, c: float) -> float:
        """C'_φ(q, c) = E[φ'(u_1)φ'(u_2)] = ∂C_φ/∂(qc); C'(q, 1) = D(q)."""
        return gaussian_expectation_2d(self.dphi, self.dphi, q, c)

    @property
    def gain_param(self) -> float | None:
        """The `param` calculate_gain takes for this activation (leaky_relu's slope)."""
        return self.params.get("negative_slope")

    def describe(self) -> str:
        inner = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        return f"{self.name}({inner})" if inner else self.name


def _relu_C(q: float, c: float) -> float:
    """E[relu(u_1) relu(u_2)] = q (√(1−c²) + (π − arccos c) c) / (2π) (Cho & Saul 2009)."""
    c = min(1.0, max(-1.0, c))
    return q * (math.sqrt(max(0.0, 1.0 - c * c)) + (math.pi - math.acos(c)) * c) / (2 * math.pi)


def _leaky_relu_C(q: float, c: float, negative_slope: float) -> float:
    """φ = relu(x) − a·relu(−x): C = (1 + a²) K(c) − 2a K(−c), K the relu kernel."""
    a = negative_slope
    return (1 + a * a) * _relu_C(q, c) - 2 * a * _relu_C(q, -c)


def _sigmoid_dphi(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s)


def _silu_dphi(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def _sigmoid_ddphi(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s) * (1 - 2 * s)


def _silu_ddphi(x: torch.Tensor) -> torch.Tensor:
    # d/dx [s (1 + x (1 − s))] = s (1 − s) (2 + x (1 − 2s)),  s = σ(x)
    s = torch.sigmoid(x)
    return s * (1 - s) * (2 + x * (1 - 2 * s))


def _gelu_dphi(x: torch.Tensor) -> torch.Tensor:
    # d/dx [x Φ(x)] = Φ(x) + x ϕ(x), by the fused kernel autograd itself uses
    return torch.ops.aten.gelu_backward(torch.ones_like(x), x)


def _gelu_ddphi(x: torch.Tensor) -> torch.Tensor:
    # d/dx [Φ(x) + x ϕ(x)] = ϕ(x) (2 − x²)
    return _INV_SQRT_2PI * torch.exp(-0.5 * x * x) * (2 - x * x)


_aten = torch.ops.aten


def _elu_backward(alpha: float, scale: float = 1.0) -> Callable[..., torch.Tensor]:
    """elu/selu's φ' from the output y: scale for y > 0, y + scale·α where y ≤ 0."""
    return lambda d, y, out, **_: _aten.elu_backward.grad_input(d, alpha, scale, 1.0, True, y,
                                                                 grad_input=out)


def _zeros(x: torch.Tensor, **_: float) -> torch.Tensor:
    return torch.zeros_like(x)


REGISTRY: dict[str, ActivationKind] = {
    k.name: k
    for k in [
        ActivationKind(
            "linear",
            phi=lambda x: x,
            dphi=torch.ones_like,
            ddphi=_zeros,
            V_closed=lambda q: q,
            D_closed=lambda q: 1.0,
            C_closed=lambda q, c: q * c,
            gain_name="linear",
            phi_=lambda x: x,
            backward=lambda d, x, out: d,  # φ' ≡ 1: nothing to apply
            doc="φ(x) = x; V = q, D = 1",
        ),
        ActivationKind(
            "relu",
            phi=torch.relu,
            dphi=lambda x: (x > 0).to(x.dtype),
            ddphi=_zeros,
            V_closed=lambda q: q / 2,
            D_closed=lambda q: 0.5,
            C_closed=_relu_C,
            gain_name="relu",
            phi_=torch.relu_,
            backward=lambda d, y, out: _aten.threshold_backward.grad_input(d, y, 0, grad_input=out),
            saves_output=lambda: True,
            doc="φ(x) = max(0, x); V = q/2, D = 1/2",
        ),
        ActivationKind(
            "leaky_relu",
            phi=lambda x, negative_slope: F.leaky_relu(x, negative_slope),
            dphi=lambda x, negative_slope: torch.where(
                x > 0, torch.ones_like(x), torch.full_like(x, negative_slope)
            ),
            ddphi=_zeros,
            V_closed=lambda q, negative_slope: q * (1 + negative_slope**2) / 2,
            D_closed=lambda q, negative_slope: (1 + negative_slope**2) / 2,
            C_closed=_leaky_relu_C,
            gain_name="leaky_relu",
            phi_=lambda x, negative_slope: F.leaky_relu_(x, negative_slope),
            # from the output only when a > 0 (its sign is then h's)
            backward=lambda d, s, out, negative_slope: _aten.leaky_relu_backward.grad_input(
                d, s, negative_slope, negative_slope > 0, grad_input=out),
            saves_output=lambda negative_slope: negative_slope > 0,
            defaults={"negative_slope": 0.01},
            doc="φ(x) = max(x, a·x); V = q(1+a²)/2, D = (1+a²)/2",
        ),
        ActivationKind(
            "tanh",
            phi=torch.tanh,
            dphi=lambda x: 1 - torch.tanh(x) ** 2,
            ddphi=lambda x: -2 * torch.tanh(x) * (1 - torch.tanh(x) ** 2),
            gain_name="tanh",
            phi_=torch.tanh_,
            backward=lambda d, y, out: _aten.tanh_backward.grad_input(d, y, grad_input=out),
            saves_output=lambda: True,
            doc="φ(x) = tanh x",
        ),
        ActivationKind(
            "sigmoid",
            phi=torch.sigmoid,
            dphi=_sigmoid_dphi,
            ddphi=_sigmoid_ddphi,
            gain_name="sigmoid",
            phi_=torch.sigmoid_,
            backward=lambda d, y, out: _aten.sigmoid_backward.grad_input(d, y, grad_input=out),
            saves_output=lambda: True,
            doc="φ(x) = 1/(1+e^-x)",
        ),
        ActivationKind(
            "selu",
            phi=F.selu,
            dphi=lambda x: torch.where(
                x > 0, torch.full_like(x, SELU_SCALE), SELU_SCALE * SELU_ALPHA * torch.exp(x)
            ),
            ddphi=lambda x: torch.where(
                x > 0, torch.zeros_like(x), SELU_SCALE * SELU_ALPHA * torch.exp(x)
            ),
            gain_name="selu",
            phi_=lambda x: F.selu(x, inplace=True),
            backward=_elu_backward(SELU_ALPHA, SELU_SCALE),
            saves_output=lambda: True,
            doc="φ(x) = λ x (x>0), λ α (e^x − 1) (x≤0)",
        ),
        ActivationKind(
            "elu",
            phi=lambda x, alpha: F.elu(x, alpha),
            dphi=lambda x, alpha: torch.where(x > 0, torch.ones_like(x), alpha * torch.exp(x)),
            ddphi=lambda x, alpha: torch.where(x > 0, torch.zeros_like(x), alpha * torch.exp(x)),
            defaults={"alpha": 1.0},
            doc="φ(x) = x (x>0), α (e^x − 1) (x≤0)",
            phi_=lambda x, alpha: F.elu_(x, alpha),
            # from the output only when α ≥ 0 (torch's rule for elu_backward on the result)
            backward=lambda d, s, out, alpha: _aten.elu_backward.grad_input(
                d, alpha, 1.0, 1.0, alpha >= 0, s, grad_input=out),
            saves_output=lambda alpha: alpha >= 0,
        ),
        ActivationKind(
            "gelu",
            phi=F.gelu,
            dphi=_gelu_dphi,
            ddphi=_gelu_ddphi,
            backward=lambda d, x, out: _aten.gelu_backward.grad_input(d, x, grad_input=out),
            doc="φ(x) = x Φ(x) (exact, erf form)",
        ),
        ActivationKind(
            "silu",
            phi=F.silu,
            dphi=_silu_dphi,
            ddphi=_silu_ddphi,
            doc="φ(x) = x σ(x)",
            phi_=lambda x: F.silu(x, inplace=True),
            backward=lambda d, x, out: _aten.silu_backward.grad_input(d, x, grad_input=out),
        ),
        ActivationKind(
            "softplus",
            phi=lambda x, beta: F.softplus(x, beta),
            # torch's softplus is exactly linear past βx > 20, so its derivative is 1 there
            dphi=lambda x, beta: torch.where(beta * x > 20, 1.0, torch.sigmoid(beta * x)),
            ddphi=lambda x, beta: torch.where(
                beta * x > 20, 0.0, beta * torch.sigmoid(beta * x) * torch.sigmoid(-beta * x)
            ),
            backward=lambda d, x, out, beta: _aten.softplus_backward.grad_input(
                d, x, beta, 20.0, grad_input=out),
            defaults={"beta": 1.0},
            doc="φ(x) = log(1 + e^{βx})/β (torch's, linear past βx > 20)",
        ),
    ]
}

NAMES: tuple[str, ...] = tuple(REGISTRY)


@functools.lru_cache(maxsize=65536)
def _C_quadrature(name: str, params: tuple[tuple[str, float], ...], q: float, c: float) -> float:
    """C_φ(q, c) by 2-D quadrature for the registered activation `name` with `params`."""
    act = get(name, **dict(params))
    return gaussian_expectation_2d(act.phi, act.phi, q, c)


def get(name: str, **params: float) -> Activation:
    """The registered activation `name` bound to `params` (missing ones take their defaults).

    Raises ValueError naming the allowed activations or parameters.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown act {name!r}; allowed: {', '.join(NAMES)}")
    kind = REGISTRY[name]
    unknown = sorted(set(params) - set(kind.defaults))
    if unknown:
        allowed = ", ".join(kind.defaults) or "none"
        raise ValueError(f"act {name} takes no parameter {unknown[0]!r}; its parameters: {allowed}")
    bound = {k: float(params.get(k, v)) for k, v in kind.defaults.items()}
    return Activation(kind, MappingProxyType(bound))
