"""LayerNorm / RMSNorm mean-field theory (harness.core.norms) against wide simulations.

Each case runs R replicates at width 1024 and compares every measured quantity's replicate mean
with the theory: |mean − theory| ≤ t·SE + floor, SE = std/√R over replicates, t the Student
quantile at the Bonferroni-corrected level α/(2K) (α = 1e-3 over the K = quantities × layers
comparisons of the case, R − 1 degrees of freedom), floor = 1e-5 · |theory| (float32 rounding of
the means; normed = var/(var+ε) has next to no spread). Seeds are fixed: the test is
deterministic, and a wrong theory (a missing factor, the wrong map) fails by many SEs.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from harness.cli import compose_config
from harness.core.spec import Spec
from harness.sim.runner import measure
from harness.theory.meanfield import predict

ALPHA = 1e-3


def check(overrides: list[str]) -> None:
    spec = Spec.from_config(compose_config(["progress=false", "device=cpu", "input_corr=0.5",
                                            *overrides]))
    m = measure(spec, progress=False)
    th = predict(spec)
    qs = [q for q in spec.quantities if q not in ("channel_mean_sq", "channel_var")]
    K = sum(len(th[q]) for q in qs)
    R = spec.replicates
    t = stats.t.ppf(1 - ALPHA / (2 * K), R - 1)
    for q in qs:
        v = m.values[q]
        mean, se = v.mean(0), v.std(0, ddof=1) / np.sqrt(R)
        tol = t * se + 1e-5 * np.abs(th[q])
        bad = np.abs(mean - th[q]) > tol
        assert not bad.any(), (q, overrides, mean[bad], th[q][bad], tol[bad])


#: the default suite: each architecture, norm, position and activation once (a few seconds)
FAST = [("mlp", "layernorm", "pre", "relu"), ("mlp", "rmsnorm", "post", "tanh"),
        ("resmlp", "layernorm", "post", "tanh"), ("resmlp", "rmsnorm", "pre", "relu")]
#: slow: every combination with relu, tanh, linear, gelu
SLOW = [(arch, norm, pos, act) for arch in ("mlp", "resmlp") for norm in ("layernorm", "rmsnorm")
        for pos in ("pre", "post") for act in ("relu", "tanh", "linear", "gelu")]


def overrides(arch: str, norm: str, pos: str, act: str, depth: int = 4, R: int = 8) -> list[str]:
    extra = ["residual.branch_depth=2", "residual.alpha=0.8"] if arch == "resmlp" else []
    return [f"arch={arch}", f"norm={norm}", f"norm.position={pos}", f"act={act}", "width=1024",
            f"depth={depth}", "batch=8", f"replicates={R}", "bias_std=0.1", *extra]


@pytest.mark.parametrize("arch, norm, pos, act", FAST)
def test_theory_agrees_with_width_1024(arch, norm, pos, act):
    check(overrides(arch, norm, pos, act, depth=3))


@pytest.mark.slow
@pytest.mark.parametrize("arch, norm, pos, act", SLOW)
def test_theory_agrees_deeper_slow(arch, norm, pos, act):
    check(overrides(arch, norm, pos, act, depth=12, R=16))


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("pos", ["pre", "post"])
@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_conv_theory_agrees_slow(norm, pos, padding):
    """Conv stacks: 128 channels × 8×8 positions (the norm's n = C·P = 8192)."""
    spec_overrides = ["arch=conv", f"norm={norm}", f"norm.position={pos}", "act=tanh", "width=128",
                      "image=8", f"padding_mode={padding}", "depth=4", "batch=4", "replicates=8",
                      "progress=false", "device=cpu"]
    spec = Spec.from_config(compose_config(spec_overrides))
    m = measure(spec, progress=False)
    th = predict(spec)
    qs = ["forward", "activation", "normed", "backward", "weight_grad"]
    K = sum(len(th[q]) for q in qs)
    t = stats.t.ppf(1 - ALPHA / (2 * K), spec.replicates - 1)
    for q in qs:
        v = m.values[q]
        tol = t * v.std(0, ddof=1) / np.sqrt(spec.replicates) + 1e-5 * np.abs(th[q])
        assert (np.abs(v.mean(0) - th[q]) <= tol).all(), (q, v.mean(0), th[q], tol)


def test_theory_fails_when_the_norm_is_dropped():
    """The check can fail: the unnormalized theory of the same stack misses the normalized run."""
    spec = Spec.from_config(compose_config(["progress=false", *overrides("mlp", "layernorm", "post",
                                                                           "tanh")]))
    plain = Spec.from_config(compose_config(["progress=false", "act=tanh", "width=1024", "depth=4",
                                             "batch=8", "replicates=8", "bias_std=0.1"]))
    m = measure(spec, progress=False)
    wrong = predict(plain)["backward"]
    right = predict(spec)["backward"]
    se = m.values["backward"].std(0, ddof=1) / np.sqrt(8)
    assert (np.abs(m.values["backward"].mean(0) - right) <= 6 * se).all()
    assert (np.abs(m.values["backward"].mean(0) - wrong)[:-1] > 6 * se[:-1]).all()
