"""LSUV: layer-sequential unit-variance initialization (Mishkin & Matas 2016, Algorithm 1).

Pre-initialize every weight orthogonally (`init_(…, "lsuv")` draws torch's orthogonal_ with
gain 1), then for l = 1..L, on a batch of inputs:

    repeat: h^l = W^l x^{l-1} + b^l;  v = Var(h^l);  if |v − 1| < tol: stop;  W^l ← W^l / √v
    (at most max_iter rescalings), then x^l = φ(h^l) feeds layer l+1.

Var is the variance of all entries of h^l on the batch (pooled over units and inputs, the
paper's Var(B_L)), computed for each member of the ensemble separately, so every network is
calibrated on its own. Without biases one rescaling makes v = 1 exactly (up to rounding); with
biases a few are needed, and max_iter may stop short (then `converged` is False).

The calibration batch is drawn fresh (same distribution as the measured inputs: input_var,
input_corr), so the run measures the networks on data they were not calibrated on.

Theory. LSUV's scales are data-dependent; their infinite-width values follow from running the
same algorithm on the mean-field recursion (`mean_field_gains`): v = s² σ_w,l² V_φ(q^{l−1}) + σ_b²
(σ_w,l² of the gain-1 orthogonal pre-init, V_φ(q⁰) read as q_0), rescaled s ← s/√v under the
same tol and max_iter. The theory of the run uses these (so without bias q^l = 1 at every layer
and σ_w,l² = 1/V_φ(1) for l ≥ 2). The realized scales of every network are logged and compared
with them. Their replicate mean is deliberately not fed to the recursion: each network's scale
cancels its own finite-width fluctuation, s² = 1/v̂, and E[1/v̂] > 1/E[v̂] (Jensen), so the mean
realized σ_w² exceeds the mean-field one by O(1/n) per layer, which the recursion compounds:
at width 128 and depth 20 (relu) the forward prediction would be 25% high while the calibrated
networks sit at 1; the mean-field scales predict it within the standard error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.core.activations import Activation
from harness.core.init import weight_variance
from harness.sim import dense
from harness.sim.inputs import Generators, draw_inputs

if TYPE_CHECKING:  # type hints only: the MLP's registry entry uses this module, and Spec the registry
    from harness.core.spec import Spec


@dataclass(frozen=True)
class Calibration:
    """Per replicate and layer (R, L): the total scale s applied to the orthogonal weight,
    the number of rescalings, the final output variance on the batch, and whether it is
    within tol."""

    scales: np.ndarray
    iterations: np.ndarray
    variance: np.ndarray
    converged: np.ndarray


@torch.no_grad()
def calibrate(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor] | None,
    x: torch.Tensor,
    act: Activation,
    *,
    tol: float,
    max_iter: int,
) -> Calibration:
    """Rescale the stacked weights (R, n_l, n_{l-1}) in place, layer by layer, on inputs x
    (R, B, n_0), until each member's layer-output variance is within tol of 1."""
    R, L = x.shape[0], len(weights)
    scales = np.ones((R, L))
    iterations = np.zeros((R, L), dtype=np.int64)
    variance = np.empty((R, L))
    for layer in dense.forward(weights, biases, x, act, fused=False):
        l, W = layer.index, weights[layer.index]
        b = None if biases is None else biases[l]
        v = layer.h.var(dim=(1, 2), unbiased=False).double()  # (R,)
        for _ in range(max_iter):
            todo = ((v - 1).abs() >= tol) & torch.isfinite(v) & (v > 0)
            if not bool(todo.any()):
                break
            factor = torch.where(todo, v.rsqrt(), torch.ones_like(v))  # (R,)
            W.mul_(factor.to(W.dtype)[:, None, None])
            scales[:, l] *= factor.cpu().numpy()
            iterations[:, l] += todo.cpu().numpy()
            layer.h = dense.affine(layer.x, W, b, fused=False)  # x^l = φ(h^l) of the rescaled W^l
            v = layer.h.var(dim=(1, 2), unbiased=False).double()
        variance[:, l] = v.cpu().numpy()
    converged = np.abs(variance - 1) < tol
    return Calibration(scales, iterations, variance, converged)


def calibrate_spec(
    spec: Spec,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor] | None,
    generator: Generators,
) -> Calibration:
    """`calibrate` a chunk of the run's networks on a fresh batch of `spec.batch` inputs
    (drawn from `generator`: one stream, or each replicate's own)."""
    params = dict(spec.scheme_params)
    x = draw_inputs(spec, weights[0].shape[0], generator)
    return calibrate(weights, biases, x, spec.activation, tol=params["tol"],
                     max_iter=params["max_iter"])


def mean_field_gains(spec: Spec) -> list[float]:
    """The scale s_l LSUV applies to layer l's gain-1 orthogonal weight in the mean-field
    limit: the algorithm (same tol, max_iter) run on q^l = s² σ_w,l² V_φ(q^{l−1}) + σ_b²."""
    params = dict(spec.scheme_params)
    act, b2 = spec.activation, spec.bias_std**2
    x2 = spec.input_var  # E[(x^0)²]
    gains = []
    for shape in spec.weight_shapes:
        s2_orth = shape[1] * weight_variance("orthogonal", shape, gain=1.0)
        s, v = 1.0, s2_orth * x2 + b2
        for _ in range(params["max_iter"]):
            if not (abs(v - 1) >= params["tol"] and math.isfinite(v) and v > 0):
                break
            s /= math.sqrt(v)
            v = s * s * s2_orth * x2 + b2
        gains.append(s)
        x2 = float(act.V(v))
    return gains


def collect(spec: Spec, parts: Sequence[Calibration]) -> dict[str, Any]:
    """Join the chunks: Measurement.info with "lsuv" (for metadata) and "weight_variances"
    (Var(W^l) at the mean-field LSUV gains, which the theory uses; module doc)."""
    scales = np.concatenate([p.scales for p in parts])
    iterations = np.concatenate([p.iterations for p in parts])
    variance = np.concatenate([p.variance for p in parts])
    converged = np.concatenate([p.converged for p in parts])
    mf = mean_field_gains(spec)
    var_w = [weight_variance("orthogonal", shape, gain=g) for shape, g in zip(spec.weight_shapes, mf,
                                                                               strict=True)]
    R = scales.shape[0]
    params = dict(spec.scheme_params)
    return {
        "weight_variances": var_w,
        "lsuv": {
            "tol": params["tol"],
            "max_iter": params["max_iter"],
            "calibration_batch": spec.batch,
            "iterations_mean": iterations.mean(0).tolist(),
            "iterations_max": iterations.max(0).tolist(),
            "converged_fraction": float(converged.mean()),
            "not_converged": (np.argwhere(~converged)[:50] + [0, 1]).tolist(),  # [r, layer]
            "gain_mean_field": mf,
            "gain_realized_mean": scales.mean(0).tolist(),
            "gain_realized_sem": (scales.std(0, ddof=1) / math.sqrt(R) if R > 1
                                  else np.full(scales.shape[1], np.nan)).tolist(),
            "final_variance_max_dev": float(np.nanmax(np.abs(variance - 1))),
        },
    }


def describe(info: dict[str, Any]) -> str:
    """One console line about the calibration."""
    d = info["lsuv"]
    it_max = max(d["iterations_max"])
    it_mean = float(np.mean(d["iterations_mean"]))
    conv = d["converged_fraction"]
    ratio = np.asarray(d["gain_realized_mean"]) ** 2 / np.asarray(d["gain_mean_field"]) ** 2
    status = (f"every layer of every network within tol {d['tol']:g}" if conv == 1.0 else
              f"{100 * conv:.1f}% of layer×network within tol {d['tol']:g} (max_iter "
              f"{d['max_iter']} reached)")
    return (f"lsuv: calibrated on a fresh batch of {d['calibration_batch']} inputs per network; "
            f"{it_mean:.2f} rescalings per layer on average (max {it_max}); {status}; "
            f"realized/mean-field σ_w² per layer {ratio.min():.4g}–{ratio.max():.4g}")
