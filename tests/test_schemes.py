"""The Keras/JAX variance-scaling family, trunc_normal, meanfield, lsuv and gain=exact, each
against its reference semantics.

- variance_scaling and its presets: every member against the distribution Keras's
  VarianceScaling / jax.nn.initializers.variance_scaling defines, written out here from those
  libraries' formulas with THEIR kernel layout (in, out) / (*k, in, out) and fan function
  (seeded one-sample KS against scipy.stats), and the realized variance within its standard
  error (which catches a missing 0.8796 correction: without it Var is 0.774× too small);
- trunc_normal: against torch.nn.init.trunc_normal_ itself (two-sample KS) and its variance
  against scipy.stats.truncnorm;
- meanfield: weights N(0, σ_w²/fan_in) and biases N(0, σ_b²) as the runner draws them;
- lsuv: every layer's output variance on its calibration batch within tol (recomputed here
  with one plain matmul per network), and the run's theory against the measurement;
- gain=exact: V_φ(1)^(-1/2) against scipy quad;
- bad scheme input: one line, exit 2.

KS tests use α = 1e-5 each; there are about 120 of them, so a correct implementation fails any
with probability ≤ 1.2e-3 (union bound). Moment checks use k = 5 standard errors (two-sided
5.7e-7 each). Network-level checks use Bonferroni's z at a family-wise 1e-3 (test_theory.py).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from harness.cli.experiments import names
from harness.core import init as hinit
from harness.core.init import SCHEMES, init_, weight_variance
from harness.sim import lsuv
from harness.sim.runner import measure, sample_chunk
from harness.theory.meanfield import predict
from tests.conftest import expect_one_line_error, small_spec
from tests.test_init import NAMES as TORCH_FAMILY_NAMES
from tests.test_theory import z_crit

ALPHA = 1e-5
K_SE = 5.0
R = 8
SHAPES = [(64, 32), (32, 64), (16, 8, 3, 3)]
KERAS_MODES = ["fan_in", "fan_out", "fan_avg", "fan_geo_avg"]
DISTRIBUTIONS = ["truncated_normal", "untruncated_normal", "uniform"]
PRESETS = {  # Keras/JAX definitions: (scale, mode, distribution)
    "lecun_normal": (1.0, "fan_in", "truncated_normal"),
    "lecun_uniform": (1.0, "fan_in", "uniform"),
    "he_normal": (2.0, "fan_in", "truncated_normal"),
    "he_uniform": (2.0, "fan_in", "uniform"),
    "glorot_normal": (1.0, "fan_avg", "truncated_normal"),
    "glorot_uniform": (1.0, "fan_avg", "uniform"),
}
NEW = {"variance_scaling", *PRESETS, "trunc_normal", "meanfield", "lsuv"}


def _seed(*key) -> int:
    return zlib.crc32(repr(key).encode())


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_scheme_is_covered():
    # torch's own in test_init.py, the new ones here, delta_orthogonal in test_conv.py, fixup
    # (residual branches only) in test_resmlp.py
    assert set(TORCH_FAMILY_NAMES) | NEW | {"delta_orthogonal", "fixup"} == set(hinit.NAMES)


# ---------------------------------------------------------------------------------------------
# variance_scaling against Keras/JAX


def keras_fans(keras_shape: tuple[int, ...]) -> tuple[float, float]:
    """Keras's `compute_fans` (JAX's `_compute_fans` with in_axis=-2, out_axis=-1)."""
    if len(keras_shape) == 2:
        return keras_shape[0], keras_shape[1]
    receptive = math.prod(keras_shape[:-2])
    return keras_shape[-2] * receptive, keras_shape[-1] * receptive


def keras_reference(torch_shape, scale: float, mode: str, distribution: str):
    """The scipy distribution of one entry, as Keras/JAX define variance_scaling."""
    out_, in_, *k = torch_shape
    fan_in, fan_out = keras_fans((*k, in_, out_))  # Keras kernel layout
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0,
           "fan_geo_avg": math.sqrt(fan_in * fan_out)}[mode]
    s = scale / max(1.0, fan)
    if distribution == "truncated_normal":
        sd = math.sqrt(s) / 0.87962566103423978
        return stats.truncnorm(-2, 2, scale=sd), s
    if distribution == "untruncated_normal":
        return stats.norm(scale=math.sqrt(s)), s
    limit = math.sqrt(3.0 * s)
    return stats.uniform(-limit, 2 * limit), s


def _check_entries(w: torch.Tensor, ref, var: float) -> None:
    x = w.numpy().reshape(R, -1).astype(np.float64)
    pvals = [stats.kstest(x[r], ref.cdf).pvalue for r in range(R)]
    assert min(pvals) > ALPHA, f"per-member KS p-values {pvals}"
    flat = x.ravel()
    m2, se = np.mean(flat**2), np.std(flat**2) / math.sqrt(flat.size)
    assert abs(m2 - var) <= K_SE * se, f"E[W²] {m2} vs {var} ± {se}"


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("mode", KERAS_MODES)
def test_variance_scaling_matches_keras_and_jax(mode, distribution, shape):
    scale = 1.7
    w = torch.empty((R, *shape), dtype=torch.float64)
    init_(w, "variance_scaling", scale=scale, mode=mode, distribution=distribution,
          generator=_gen(_seed("vs", mode, distribution, shape)))
    ref, var = keras_reference(shape, scale, mode, distribution)
    _check_entries(w, ref, var)
    # the one function theory uses agrees with the library formula
    got = weight_variance("variance_scaling", shape, mode=mode, scale=scale)
    assert got == pytest.approx(var, rel=1e-14)


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_presets_match_keras_and_jax(name, shape):
    scale, mode, distribution = PRESETS[name]
    w = torch.empty((R, *shape), dtype=torch.float64)
    # presets ignore the mode argument, as the library presets take none
    init_(w, name, mode="fan_out", generator=_gen(_seed("preset", name, shape)))
    ref, var = keras_reference(shape, scale, mode, distribution)
    _check_entries(w, ref, var)
    assert weight_variance(name, shape, mode="fan_out") == pytest.approx(var, rel=1e-14)


def test_truncated_normal_is_corrected():
    """The sharp check above can fail: an uncorrected truncated normal (σ = √(scale/fan), as
    torch's trunc_normal_ with bounds ±2σ would give) has variance 0.7737·scale/fan."""
    shape = (64, 32)
    w = torch.empty((R, *shape), dtype=torch.float64)
    sd = math.sqrt(1.0 / 32)
    torch.nn.init.trunc_normal_(w, 0.0, sd, -2 * sd, 2 * sd, generator=_gen(5))
    ref, var = keras_reference(shape, 1.0, "fan_in", "truncated_normal")
    with pytest.raises(AssertionError):
        _check_entries(w, ref, var)


# ---------------------------------------------------------------------------------------------
# trunc_normal against torch

TRUNC_CASES = [  # (mean, std, a, b)
    (0.0, 1.0, -2.0, 2.0),  # torch's defaults
    (0.0, 0.02, -2.0, 2.0),  # the trap: absolute bounds at ±100σ, in effect untruncated
    (0.0, 1.0, -0.5, 0.5),
    (0.5, 1.0, -1.0, 3.0),  # asymmetric (init_ follows torch; Spec rejects it, see below)
]


@pytest.mark.parametrize("mean, std, a, b", TRUNC_CASES)
def test_trunc_normal_matches_torch(mean, std, a, b):
    shape = (48, 40)
    seed = _seed("trunc", mean, std, a, b)
    w = torch.empty((R, *shape), dtype=torch.float64)
    init_(w, "trunc_normal", mean=mean, std=std, a=a, b=b, generator=_gen(seed))
    ref = torch.empty((R, *shape), dtype=torch.float64)
    gen = _gen(seed + 1)
    for r in range(R):
        torch.nn.init.trunc_normal_(ref[r], mean, std, a, b, generator=gen)
    wn, rn = w.numpy().reshape(R, -1), ref.numpy().reshape(R, -1)
    assert min(stats.ks_2samp(wn[r], rn[r]).pvalue for r in range(R)) > ALPHA
    assert wn.min() >= a and wn.max() <= b
    ref_dist = stats.truncnorm((a - mean) / std, (b - mean) / std, loc=mean, scale=std)
    m, v = hinit.trunc_normal_moments(mean, std, a, b)
    assert m == pytest.approx(ref_dist.mean(), rel=1e-12, abs=1e-15)
    assert v == pytest.approx(ref_dist.var(), rel=1e-12)
    assert weight_variance("trunc_normal", shape, mean=mean, std=std, a=a, b=b) == v


def test_trunc_normal_trap_is_untruncated():
    # torch's default bounds with a small std cut nothing: the variance is std² to 1e-12
    assert hinit.trunc_normal_moments(0.0, 0.02, -2.0, 2.0)[1] == pytest.approx(4e-4, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# meanfield


def test_meanfield_weights_and_biases():
    spec = small_spec("scheme=meanfield", "scheme.sigma_w2=2.5", "scheme.sigma_b2=0.3",
                      "widths=[40,64,32]", "depth=2", "replicates=16", "dtype=float64")
    assert spec.bias_std == pytest.approx(math.sqrt(0.3))
    weights, biases, _, _ = sample_chunk(spec, spec.replicates, _gen(11))
    for W in weights:
        fan_in = W.shape[2]
        ref = stats.norm(scale=math.sqrt(2.5 / fan_in))
        assert stats.kstest(W.numpy().ravel(), ref.cdf).pvalue > ALPHA
    bias = torch.cat([b.ravel() for b in biases]).numpy()
    assert stats.kstest(bias, stats.norm(scale=math.sqrt(0.3)).cdf).pvalue > ALPHA
    # theory's σ_w² is the configured one at every layer
    fan_in = np.array([s[1] for s in spec.weight_shapes])
    np.testing.assert_allclose(fan_in * spec.weight_variances(), 2.5, rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# lsuv


@pytest.mark.parametrize("bias_std", [0.0, 0.4])
def test_lsuv_every_layer_within_tol_on_its_batch(bias_std):
    spec = small_spec("scheme=lsuv", "act=tanh", "depth=6", "widths=[20,48,32,48,40,24,16]",
                      f"bias_std={bias_std}", "batch=16", "replicates=4", "dtype=float64",
                      "scheme.tol=0.02")
    g = _gen(3)
    weights, biases, _, _ = sample_chunk(spec, spec.replicates, g)
    x = torch.randn((spec.replicates, spec.batch, 20), generator=g, dtype=torch.float64)
    before = [W.clone() for W in weights]
    cal = lsuv.calibrate(weights, biases, x, spec.activation, tol=0.02, max_iter=10)
    assert cal.converged.all()
    act = spec.activation
    for r in range(spec.replicates):  # recompute each network on its own, one layer at a time
        h_in = x[r]
        for l, W in enumerate(weights):
            h = h_in @ W[r].T + (biases[l][r] if biases is not None else 0)
            assert abs(h.var(unbiased=False).item() - 1) < 0.02, (r, l)
            # the weight is the orthogonal pre-init times the logged scale
            torch.testing.assert_close(W[r], before[l][r] * cal.scales[r, l])
            h_in = act.phi(h)
    # without bias one rescaling reaches 1 up to rounding; with bias more are needed
    if bias_std == 0:
        assert cal.iterations.max() == 1 and np.abs(cal.variance - 1).max() < 1e-10
    else:
        assert cal.iterations.max() > 1


@pytest.mark.parametrize("act_name", ["relu", "tanh"])
def test_lsuv_theory_matches_measurement(act_name):
    """The mean-field LSUV gains (harness.sim.lsuv) predict the calibrated networks on fresh inputs.
    The realized gains carry an O(1/n) Jensen bias per layer that compounds in the backward
    pass, so the width is large enough (256) for it to stay below the standard error."""
    spec = small_spec("scheme=lsuv", f"act={act_name}", "depth=8", "width=256", "batch=16",
                      "replicates=16", "seed=4")
    m = measure(spec, progress=False)
    p = predict(spec, m.info["weight_variances"])
    keys = ["forward", "backward"]
    comparisons = sum(m.values[k].shape[1] for k in keys)
    for k in keys:
        v = m.values[k]
        se = v.std(0, ddof=1) / math.sqrt(v.shape[0])
        z = (v.mean(0) - p[k]) / np.maximum(se, 1e-12)
        assert np.all(np.abs(z) <= z_crit(comparisons)), (k, np.round(z, 2))
    info = m.info["lsuv"]
    assert info["converged_fraction"] == 1.0
    assert len(info["gain_realized_mean"]) == len(info["iterations_mean"]) == spec.depth


def test_lsuv_mean_field_gains_closed_form():
    # relu, square, no bias: layer 1 sees q_0 = 1 (within tol: not rescaled), then V = q/2, so
    # each later layer is rescaled by √2 to bring 1/2 back to 1
    spec = small_spec("scheme=lsuv", "act=relu", "depth=4", "width=16")
    np.testing.assert_allclose(lsuv.mean_field_gains(spec), [1, *[math.sqrt(2)] * 3], rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# gain=exact


@pytest.mark.parametrize("scheme", ["kaiming", "kaiming_uniform", "xavier_normal", "orthogonal"])
def test_gain_exact_is_forward_variance_preserving(scheme):
    spec = small_spec(f"scheme={scheme}", "scheme.gain=exact", "act=tanh", "depth=3", "width=8")
    V1 = integrate.quad(lambda u: np.tanh(u) ** 2 * stats.norm.pdf(u), -40, 40, points=[0],
                        epsabs=1e-14, epsrel=1e-13)[0]
    assert spec.gain == pytest.approx(1 / math.sqrt(V1), rel=1e-10)
    assert "gain exact" in spec.gain_source


# ---------------------------------------------------------------------------------------------
# bad input

BAD = [
    (["scheme=kaiming", "mode=fan_avg"], "unknown mode 'fan_avg'; allowed: fan_in, fan_out"),
    (["scheme=xavier", "mode=fan_geo_avg"], "mode fan_geo_avg is used only by variance_scaling"),
    (["mode=fan_x"], "unknown mode 'fan_x'; allowed: fan_in, fan_out, fan_avg, fan_geo_avg"),
    (["scheme=variance_scaling", "scheme.distribution=normal"], "'normal' is ambiguous"),
    (["scheme=variance_scaling", "scheme.scale=0"], "scheme.scale must be a finite number > 0"),
    (["scheme=variance_scaling", "scheme.gain=2"], "unknown config key 'scheme.gain'"),
    (["scheme=variance_scaling", "+scheme.gain=2"], "scheme variance_scaling takes no gain"),
    (["scheme=he_normal", "+scheme.scale=2"], "scheme he_normal takes no scale"),
    (["scheme=trunc_normal", "scheme.mean=0.1"], "needs zero-mean weights"),
    (["scheme=trunc_normal", "scheme.std=-1"], "scheme.std must be a finite number > 0"),
    (["scheme=meanfield", "bias_std=0.1"], "leave bias_std at 0"),
    (["scheme=meanfield", "scheme.sigma_w2=0"], "scheme.sigma_w2 must be a finite number > 0"),
    (["scheme=lsuv", "scheme.max_iter=0.5"], "scheme.max_iter must be an integer ≥ 1"),
    (["scheme=lsuv", "scheme.tol=0"], "scheme.tol must be a finite number > 0"),
    (["scheme.gain=exactly"], "scheme.gain must be a finite number > 0 or exact"),
    (["input_corr=1.5"], "input_corr must be a number in [0, 1]"),
    (["experiment=nope"], f"unknown experiment 'nope'; allowed: {', '.join(names())}"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_scheme_input_is_one_line_exit_2(args, message, capsys):
    expect_one_line_error(args, message, capsys)


def test_every_new_scheme_composes_and_validates():
    for name in NEW:
        spec = small_spec(f"scheme={name}", "depth=2", "width=4")
        assert spec.scheme == name
        assert set(dict(spec.scheme_params)) <= set(SCHEMES[name].parameters)
