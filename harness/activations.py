"""The activation registry: one entry per activation holds everything about it.

Each entry has the torch function φ, its derivative φ', the Gaussian moments

    V_φ(q) = E_{z~N(0,q)}[φ(z)²]        D_φ(q) = E_{z~N(0,q)}[φ'(z)²]

in closed form where one exists (linear, relu, leaky_relu) and by quadrature otherwise
(`harness.quadrature`, accurate to 1e-10 relative for q ≤ 100), and the name under which
`torch.nn.init.calculate_gain` knows it (None where torch has no gain for it). φ and φ' are
written once, in torch, and serve both the runner (on the device, any dtype) and the theory
(float64 quadrature nodes on the CPU), so the two cannot drift apart.

    >>> act = get("leaky_relu", negative_slope=0.1)
    >>> float(act.V(2.0))     # q (1 + a²) / 2
    1.01
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .quadrature import gaussian_expectation

Fn = Callable[..., torch.Tensor]
Moment = Callable[..., Any]

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class ActivationKind:
    """A registry entry: φ(x, **p), φ'(x, **p), optional closed-form V(q, **p), D(q, **p)."""

    name: str
    phi: Fn
    dphi: Fn
    V_closed: Moment | None = None
    D_closed: Moment | None = None
    gain_name: str | None = None
    defaults: Mapping[str, float] = field(default_factory=dict)
    doc: str = ""


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

    @property
    def gain_param(self) -> float | None:
        """The `param` calculate_gain takes for this activation (leaky_relu's slope)."""
        return self.params.get("negative_slope")

    def describe(self) -> str:
        inner = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        return f"{self.name}({inner})" if inner else self.name


def _sigmoid_dphi(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s)


def _silu_dphi(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def _gelu_dphi(x: torch.Tensor) -> torch.Tensor:
    # d/dx [x Φ(x)] = Φ(x) + x ϕ(x)
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2.0)))
    return cdf + x * _INV_SQRT_2PI * torch.exp(-0.5 * x * x)


REGISTRY: dict[str, ActivationKind] = {
    k.name: k
    for k in [
        ActivationKind(
            "linear",
            phi=lambda x: x,
            dphi=torch.ones_like,
            V_closed=lambda q: q,
            D_closed=lambda q: 1.0,
            gain_name="linear",
            doc="φ(x) = x; V = q, D = 1",
        ),
        ActivationKind(
            "relu",
            phi=torch.relu,
            dphi=lambda x: (x > 0).to(x.dtype),
            V_closed=lambda q: q / 2,
            D_closed=lambda q: 0.5,
            gain_name="relu",
            doc="φ(x) = max(0, x); V = q/2, D = 1/2",
        ),
        ActivationKind(
            "leaky_relu",
            phi=lambda x, negative_slope: F.leaky_relu(x, negative_slope),
            dphi=lambda x, negative_slope: torch.where(
                x > 0, torch.ones_like(x), torch.full_like(x, negative_slope)
            ),
            V_closed=lambda q, negative_slope: q * (1 + negative_slope**2) / 2,
            D_closed=lambda q, negative_slope: (1 + negative_slope**2) / 2,
            gain_name="leaky_relu",
            defaults={"negative_slope": 0.01},
            doc="φ(x) = max(x, a·x); V = q(1+a²)/2, D = (1+a²)/2",
        ),
        ActivationKind(
            "tanh",
            phi=torch.tanh,
            dphi=lambda x: 1 - torch.tanh(x) ** 2,
            gain_name="tanh",
            doc="φ(x) = tanh x",
        ),
        ActivationKind(
            "sigmoid",
            phi=torch.sigmoid,
            dphi=_sigmoid_dphi,
            gain_name="sigmoid",
            doc="φ(x) = 1/(1+e^-x)",
        ),
        ActivationKind(
            "selu",
            phi=F.selu,
            dphi=lambda x: torch.where(
                x > 0, torch.full_like(x, SELU_SCALE), SELU_SCALE * SELU_ALPHA * torch.exp(x)
            ),
            gain_name="selu",
            doc="φ(x) = λ x (x>0), λ α (e^x − 1) (x≤0)",
        ),
        ActivationKind(
            "elu",
            phi=lambda x, alpha: F.elu(x, alpha),
            dphi=lambda x, alpha: torch.where(x > 0, torch.ones_like(x), alpha * torch.exp(x)),
            defaults={"alpha": 1.0},
            doc="φ(x) = x (x>0), α (e^x − 1) (x≤0)",
        ),
        ActivationKind(
            "gelu",
            phi=F.gelu,
            dphi=_gelu_dphi,
            doc="φ(x) = x Φ(x) (exact, erf form)",
        ),
        ActivationKind(
            "silu",
            phi=F.silu,
            dphi=_silu_dphi,
            doc="φ(x) = x σ(x)",
        ),
        ActivationKind(
            "softplus",
            phi=lambda x, beta: F.softplus(x, beta),
            # torch's softplus is exactly linear past βx > 20, so its derivative is 1 there
            dphi=lambda x, beta: torch.where(beta * x > 20, 1.0, torch.sigmoid(beta * x)),
            defaults={"beta": 1.0},
            doc="φ(x) = log(1 + e^{βx})/β (torch's, linear past βx > 20)",
        ),
    ]
}

NAMES: tuple[str, ...] = tuple(REGISTRY)


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
