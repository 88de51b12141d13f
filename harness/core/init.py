"""Initialization schemes for stacked ensembles, following `torch.nn.init` exactly.

A stacked weight has shape (R, out, in, *kernel): R independent members, each of torch's own
layout. Fans are computed for ONE member, exactly as `torch.nn.init._calculate_fan_in_and_fan_out`
does for a single network's weight (fan_in = in·∏kernel, fan_out = out·∏kernel), never for the
stacked tensor.

Every scheme's weight variance comes from one function, `weight_variance`, which both the sampler
(`init_`) and the theory (`harness.theory.meanfield`) call, so code and prediction cannot drift apart:

====================  =========================  ==========================================
scheme                Var(W)                     distribution
====================  =========================  ==========================================
xavier_uniform        2g²/(fan_in+fan_out)       U(−b, b), b = g√(6/(fan_in+fan_out))
xavier_normal         2g²/(fan_in+fan_out)       N(0, Var)
kaiming_uniform       g²/fan_mode                U(−b, b), b = g√(3/fan_mode)
kaiming_normal        g²/fan_mode                N(0, Var)
orthogonal            g²/max(rows, cols)         g·Q, Q from the QR of a Gaussian (rows, cols)
delta_orthogonal      g²/(out·∏kernel)           centre tap g·Q (out×in, orthonormal columns),
                                                 every other tap 0 (Xiao et al. 2018)
torch_default         1/(3·fan_in)               kaiming_uniform_(a=√5): nn.Linear's default
trunc_normal          Var of N(μ, σ²) on [a, b]  torch's trunc_normal_(mean, std, a, b): absolute
                                                 bounds, no correction (Var < σ² when cut)
variance_scaling      scale/fan_mode             Keras/JAX VarianceScaling (below)
lecun_normal          1/fan_in                   preset: scale 1, fan_in, truncated_normal
lecun_uniform         1/fan_in                   preset: scale 1, fan_in, uniform
he_normal             2/fan_in                   preset: scale 2, fan_in, truncated_normal
he_uniform            2/fan_in                   preset: scale 2, fan_in, uniform
glorot_normal         2/(fan_in+fan_out)         preset: scale 1, fan_avg, truncated_normal
glorot_uniform        2/(fan_in+fan_out)         preset: scale 1, fan_avg, uniform
meanfield             σ_w²/fan_in                N(0, σ_w²/fan_in); biases N(0, σ_b²)
lsuv                  data-dependent             orthogonal, then rescaled per layer (harness.sim.lsuv)
====================  =========================  ==========================================

`xavier` and `kaiming` are short names for xavier_normal and kaiming_normal. Each scheme's
registry entry (`harness.core.schemes`) holds its parameters, variance, sampler and config
resolution; the functions here ask it. torch.nn.init's primitives (calculate_gain, fans, the
batched draws) are in `harness.core.sampling`; both are re-exported here.

For delta_orthogonal the variance is the mean over all entries (the centre tap's entries have
mean square g²/out, the others are 0), so fan_in·Var(W) = g²·in/out, which is g² for square
layers; `tap_variances` gives the per-tap profile the position-resolved conv theory needs.

variance_scaling (Keras ``VarianceScaling``, JAX ``jax.nn.initializers.variance_scaling``):
Var = scale/fan with fan = fan_in | fan_out | fan_avg = (fan_in+fan_out)/2 | fan_geo_avg =
√(fan_in·fan_out) (JAX only), and distribution

- ``truncated_normal``: N(0, σ²) cut at ±2σ with σ = √(scale/fan)/0.87962566103423978, so the
  realized variance is scale/fan (Keras's and JAX's formula);
- ``untruncated_normal``: N(0, scale/fan);
- ``uniform``: U(−√(3·scale/fan), √(3·scale/fan)).

Keras and JAX lay a dense kernel out as (in, out) and a conv kernel as (*k, in, out); torch as
(out, in, *k). Their fans of the same layer are the same numbers, so fans here are computed
from torch's layout.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from harness.core.sampling import (
    DISTRIBUTIONS,
    GAIN_NONLINEARITIES,
    MODES,
    TORCH_MODES,
    TRUNC_STD,
    calculate_gain,
    draw_,
    fan,
    fans,
    trunc_normal_moments,
)
from harness.core.schemes import ALIASES, NAMES, SCHEMES, Scheme, scheme

__all__ = [
    "ALIASES", "DISTRIBUTIONS", "GAIN_NONLINEARITIES", "MODES", "NAMES", "SCHEMES", "TORCH_MODES",
    "TRUNC_STD", "Scheme", "calculate_gain", "draw_", "fan", "fans", "iid_form", "init_",
    "resolve_gain", "scheme", "tap_variances", "trunc_normal_moments", "weight_variance",
]


def resolve_gain(
    name: str,
    *,
    nonlinearity: str = "leaky_relu",
    a: float | None = 0.0,
    gain: float | None = None,
    **params: Any,
) -> float:
    """The gain g a scheme uses (the `gain` column of the results).

    torch_default: always calculate_gain('leaky_relu', √5) = √(1/3); variance_scaling and its
    presets: √scale; meanfield: √σ_w²; trunc_normal: nan (an absolute std, no gain); none of
    these takes a gain. Otherwise an explicit `gain` wins; else kaiming's
    calculate_gain(nonlinearity, a), and 1 for xavier, orthogonal and lsuv (its pre-init).
    """
    return scheme(name).gain(params, gain=gain, nonlinearity=nonlinearity, a=a)


def weight_variance(
    name: str,
    shape: tuple[int, ...] | torch.Size,
    *,
    mode: str = "fan_in",
    gain: float = 1.0,
    **params: Any,
) -> float:
    """Var(W) of one member's weight of `shape` under scheme `name` (see the table).

    `gain` is used by xavier, kaiming, orthogonal and delta_orthogonal; `params` are the
    scheme's own (variance_scaling: scale; trunc_normal: mean, std, a, b; meanfield: sigma_w2;
    kaiming's nonlinearity and a are accepted and unused: pass the resolved gain).
    The theory's σ_w² is fan_in · weight_variance(...).
    """
    return scheme(name).weight_variance(shape, mode=mode, gain=gain, params=params)


def tap_variances(
    name: str,
    shape: tuple[int, ...] | torch.Size,
    *,
    mode: str = "fan_in",
    gain: float = 1.0,
    **params: Any,
) -> np.ndarray:
    """E[W[:, :, t]²] per kernel tap t, an array of shape ``shape[2:]`` (a 0-d array for a
    Linear weight); its mean over taps is `weight_variance`.

    Every scheme but delta_orthogonal treats all taps alike; delta_orthogonal puts g²/out on
    the centre tap (an orthogonal out×in matrix with orthonormal columns) and 0 elsewhere.
    """
    return scheme(name).tap_variances(shape, mode=mode, gain=gain, params=params)


@torch.no_grad()
def init_(
    weight: torch.Tensor,
    scheme_name: str,
    *,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    a: float | None = None,
    gain: float | None = None,
    generator: torch.Generator | None = None,
    **params: Any,
) -> torch.Tensor:
    """Fill a stacked weight (R, out, in, *kernel) in place, each member distributed exactly as
    the torch.nn.init function (or the Keras/JAX initializer) of that scheme would fill that
    member's own (out, in, *kernel) tensor.

    Args:
        weight: the stacked tensor; fans come from ``weight.shape[1:]``.
        scheme_name: one of `NAMES` (``xavier`` = xavier_normal, ``kaiming`` = kaiming_normal).
        mode: ``fan_in`` or ``fan_out`` (kaiming, as in torch); also ``fan_avg`` and
            ``fan_geo_avg`` for variance_scaling (Keras/JAX). Other schemes ignore it.
        nonlinearity, a: passed to `calculate_gain` by the kaiming schemes, as in torch
            (a default 0). For trunc_normal `a` is torch's lower bound (default −2).
        gain: overrides the scheme's gain (xavier, kaiming, orthogonal, delta_orthogonal, lsuv).
        generator: the torch.Generator to draw from (on the weight's device).
        params: the scheme's own parameters: variance_scaling ``scale``, ``distribution``;
            trunc_normal ``mean``, ``std``, ``b``; meanfield ``sigma_w2`` (``sigma_b2`` is the
            biases'); lsuv ``tol``, ``max_iter`` (used by `harness.sim.lsuv`, not here).

    Std σ = √weight_variance(...); uniform variants draw U(−√3σ, √3σ); truncated normals of
    the variance_scaling family draw N(0, (σ/0.8796…)²) cut at ±2σ/0.8796…; trunc_normal is
    ``torch.nn.init.trunc_normal_(w, mean, std, a, b)`` itself (elementwise iid, so the stacked
    call equals one call per member). lsuv draws its orthogonal pre-init here. delta_orthogonal
    zeroes the weight and sets its centre tap to g·H, H (out, in) with orthonormal columns.

    >>> w = torch.empty(8, 64, 32)
    >>> _ = init_(w, "kaiming_normal", nonlinearity="relu")   # each member: std √(2/32)
    >>> _ = init_(w, "variance_scaling", scale=2.0, mode="fan_avg", distribution="uniform")
    """
    if weight.dim() < 3:
        raise ValueError(
            f"init_ needs a stacked weight (R, out, in, *kernel); got shape {tuple(weight.shape)}"
        )
    return scheme(scheme_name).init_(weight, mode=mode, nonlinearity=nonlinearity, a=a, gain=gain,
                                     generator=generator, params=params)


def iid_form(
    scheme_name: str,
    shape: tuple[int, ...],
    *,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    a: float | None = None,
    gain: float | None = None,
    **params: Any,
) -> tuple[str, float] | None:
    """(kind, scale) such that one member's weight of `shape` is scale·Z with Z iid of `kind`:
    "normal" N(0, 1), "uniform" U(−1, 1), "truncated_normal" N(0, 1) cut at ±2 — for the
    schemes that draw iid entries with a std σ = √weight_variance (scale σ, √3σ and σ/0.8796…
    respectively). None for orthogonal, delta_orthogonal, lsuv and torch-semantics
    trunc_normal, which draw otherwise (`init_`)."""
    return scheme(scheme_name).iid_form(shape, mode=mode, nonlinearity=nonlinearity, a=a,
                                        gain=gain, params=params)
