"""harness.core.init checked against torch.nn.init and against the variance table of docs/theory.md
("Weight variances of the schemes").

- calculate_gain, fans: equal to torch.nn.init.calculate_gain / _calculate_fan_in_and_fan_out,
  same errors;
- weight_variance: against the table (init.py docstring, docs/theory.md) written out here;
- resolve_gain: kaiming → calculate_gain(nonlinearity, a), explicit gain wins, torch_default
  √(1/3) always, the rest 1;
- init_: each member of a stacked (R, *shape) tensor against the torch.nn.init function filling
  one same-shape tensor (two-sample KS, as torch's own test_init does), plus sharp checks of
  the scale (uniform: the bound; normal: the variance within its standard error); lecun_normal
  against scipy's truncnorm; orthogonal by its algebra and by its single-entry distribution;
  independence of members, generator, dtype and argument handling.

These cover the torch schemes and lecun_normal; the Keras/JAX family, trunc_normal, meanfield
and lsuv are in test_schemes.py (which also checks that every registered scheme is covered).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from scipy import stats

from harness.core import init as hinit
from harness.core.init import (
    GAIN_NONLINEARITIES,
    calculate_gain,
    fans,
    init_,
    resolve_gain,
    weight_variance,
)

#: the schemes this file covers
NAMES = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal",
         "lecun_normal", "torch_default", "xavier", "kaiming")
R = 8  # members per stacked tensor
SHAPES = [(64, 32), (32, 64), (16, 8, 3, 3)]

# Significance. Every KS comparison in this file uses α = 1e-5. There are about 700 of them
# (66 non-orthogonal configs × (8 members + 1 pooled), 48 lecun members, 6 orthogonal entries,
# float64 ones), so by the union bound a correct implementation fails any of them with
# probability ≤ 700 · 1e-5 = 0.7% for a fresh seed. Moment checks use k = 5 standard errors
# (two-sided normal tail 5.7e-7 each, < 100 of them: ≤ 6e-5 in all).
ALPHA = 1e-5
K_SE = 5.0


def _seed(*key) -> int:
    """A distinct, reproducible seed per test case."""
    return zlib.crc32(repr(key).encode())


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# calculate_gain, fans


@pytest.mark.parametrize("param", [None, 0, 0.2, 1])
@pytest.mark.parametrize("nonlinearity", GAIN_NONLINEARITIES)
def test_calculate_gain_equals_torch(nonlinearity, param):
    assert calculate_gain(nonlinearity, param) == torch.nn.init.calculate_gain(nonlinearity, param)


@pytest.mark.parametrize(
    "nonlinearity, param",
    [("swish", None), ("ReLU", None), ("leaky_relu", True), ("leaky_relu", "x")],
)
def test_calculate_gain_errors_like_torch(nonlinearity, param):
    with pytest.raises(ValueError):
        torch.nn.init.calculate_gain(nonlinearity, param)  # the reference raises …
    with pytest.raises(ValueError):
        calculate_gain(nonlinearity, param)  # … and so must the harness


FAN_SHAPES = [(64, 32), (32, 64), (7, 1), (16, 8, 3), (16, 8, 3, 3), (4, 6, 3, 5), (8, 4, 3, 3, 3)]


@pytest.mark.parametrize("shape", FAN_SHAPES)
def test_fans_equal_torch(shape):
    expected = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert fans(shape) == expected
    assert fans(torch.Size(shape)) == expected


@pytest.mark.parametrize("shape", [(5,), ()])
def test_fans_reject_fewer_than_two_dims(shape):
    with pytest.raises(ValueError):
        torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    with pytest.raises(ValueError):
        fans(shape)


# ---------------------------------------------------------------------------------------------
# weight_variance against the table


def _table_variance(name: str, shape, mode: str, g: float) -> float:
    """Var(W) from the table in docs/theory.md / init.py, fans written out from the shape."""
    out_, in_, k = shape[0], shape[1], math.prod(shape[2:])
    fan_in, fan_out = in_ * k, out_ * k
    family = {"xavier": "xavier_normal", "kaiming": "kaiming_normal"}.get(name, name)
    if family.startswith("xavier"):
        return 2 * g**2 / (fan_in + fan_out)
    if family.startswith("kaiming"):
        return g**2 / (fan_in if mode == "fan_in" else fan_out)
    if family == "orthogonal":
        return g**2 / max(out_, in_ * k)
    if family == "delta_orthogonal":  # centre tap g²/out, the other k−1 taps 0
        return g**2 / out_ / k
    if family == "lecun_normal":
        return g**2 / fan_in
    if family == "torch_default":
        return 1 / (3 * fan_in)
    raise AssertionError(name)


VAR_SHAPES = [(64, 32), (32, 64), (10, 7), (16, 8, 3), (16, 8, 3, 3), (4, 6, 3, 5), (8, 4, 3, 3, 3)]


@pytest.mark.parametrize("shape", VAR_SHAPES)
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize("name", NAMES)
def test_weight_variance_matches_table(name, mode, shape):
    gains = [1.0] if name in ("torch_default", "lecun_normal") else [1.0, 5 / 3, math.sqrt(2)]
    for g0 in gains:
        g = resolve_gain(name, gain=g0)  # torch_default's g is always √(1/3)
        got = weight_variance(name, shape, mode=mode, gain=g)
        assert got == pytest.approx(_table_variance(name, shape, mode, g0), rel=1e-14)


def test_weight_variance_rejects_bad_mode_and_scheme():
    with pytest.raises(ValueError):
        weight_variance("kaiming_normal", (4, 3), mode="fan_avg")
    with pytest.raises(ValueError) as info:
        weight_variance("he_normal_", (4, 3))
    assert all(n in str(info.value) for n in NAMES)


# ---------------------------------------------------------------------------------------------
# resolve_gain

KAIMING = ["kaiming_uniform", "kaiming_normal", "kaiming"]


@pytest.mark.parametrize("a", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("nonlinearity", GAIN_NONLINEARITIES)
@pytest.mark.parametrize("name", KAIMING)
def test_resolve_gain_kaiming_follows_calculate_gain(name, nonlinearity, a):
    expected = torch.nn.init.calculate_gain(nonlinearity, a)
    assert resolve_gain(name, nonlinearity=nonlinearity, a=a) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("torch_default", "lecun_normal")])
def test_resolve_gain_explicit_gain_wins(name):
    for g in (0.5, 2.5):
        assert resolve_gain(name, nonlinearity="tanh", a=0.3, gain=g) == g


def test_lecun_normal_takes_no_gain():
    # its realized variance is 1/fan_in whatever gain is passed
    assert resolve_gain("lecun_normal", gain=3.0) == 1.0
    assert weight_variance("lecun_normal", (8, 32), gain=3.0) == pytest.approx(1 / 32, rel=1e-15)


@pytest.mark.parametrize(
    "kwargs", [{}, {"gain": 2.0}, {"nonlinearity": "relu"}, {"nonlinearity": "tanh", "a": 0.3}]
)
def test_resolve_gain_torch_default_is_sqrt_one_third(kwargs):
    # nn.Linear's kaiming_uniform_(a=√5): calculate_gain('leaky_relu', √5) = √(2/6)
    assert resolve_gain("torch_default", **kwargs) == pytest.approx(math.sqrt(1 / 3), rel=1e-15)


@pytest.mark.parametrize(
    "name", ["xavier_uniform", "xavier_normal", "xavier", "orthogonal", "lecun_normal"]
)
def test_resolve_gain_default_one(name):
    assert resolve_gain(name) == 1.0
    assert resolve_gain(name, nonlinearity="relu", a=0.5) == 1.0


# ---------------------------------------------------------------------------------------------
# init_ distributions against torch.nn.init

TORCH_FN = {
    "xavier_uniform": torch.nn.init.xavier_uniform_,
    "xavier_normal": torch.nn.init.xavier_normal_,
    "xavier": torch.nn.init.xavier_normal_,
    "kaiming_uniform": torch.nn.init.kaiming_uniform_,
    "kaiming_normal": torch.nn.init.kaiming_normal_,
    "kaiming": torch.nn.init.kaiming_normal_,
    "torch_default": lambda t, generator: torch.nn.init.kaiming_uniform_(
        t, a=math.sqrt(5), generator=generator
    ),
}
UNIFORM = {"xavier_uniform", "kaiming_uniform", "torch_default"}
NONLIN = [("relu", 0.0), ("tanh", 0.0), ("leaky_relu", 0.2)]

CONFIGS = []  # (name, mode, nonlinearity, a)
for _n in TORCH_FN:
    if _n in KAIMING:
        CONFIGS += [(_n, m, nl, a) for m in ("fan_in", "fan_out") for nl, a in NONLIN]
    else:
        CONFIGS.append((_n, "fan_in", "leaky_relu", 0.0))


def test_this_files_schemes_are_registered():
    # tests/test_schemes.py checks that every registered scheme is covered by some test file
    assert set(NAMES) <= set(hinit.NAMES)


def _torch_reference(name, mode, nonlinearity, a, member_shape, n_members, seed, dtype):
    """n_members tensors of member_shape, each filled by the torch.nn.init function itself."""
    ref = torch.empty((n_members, *member_shape), dtype=dtype)
    gen = _gen(seed)
    for r in range(n_members):
        if name in KAIMING:
            TORCH_FN[name](ref[r], a=a, mode=mode, nonlinearity=nonlinearity, generator=gen)
        else:
            TORCH_FN[name](ref[r], generator=gen)
    return ref


def _torch_std(name, mode, nonlinearity, a, shape) -> float:
    """The std torch.nn.init uses, written out from torch's formulas."""
    fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    if name in KAIMING:
        g = torch.nn.init.calculate_gain(nonlinearity, a)
        return g / math.sqrt(fan_in if mode == "fan_in" else fan_out)
    if name == "torch_default":
        return torch.nn.init.calculate_gain("leaky_relu", math.sqrt(5)) / math.sqrt(fan_in)
    return math.sqrt(2.0 / (fan_in + fan_out))  # xavier, gain 1


def _check_scale(w: np.ndarray, name: str, std: float):
    """Sharp check of the scale on the pooled entries (iid under a correct implementation)."""
    x = w.ravel().astype(np.float64)
    n = x.size
    if name in UNIFORM:
        b = math.sqrt(3.0) * std
        # |W| ~ U(0, b): P(max|W| < b(1−ε)) = (1−ε)^n ≤ e^{−nε} = 1e-9 for ε = 20.7/n
        eps = -math.log(1e-9) / n
        assert np.abs(x).max() <= b * (1 + 1e-6)
        assert np.abs(x).max() >= b * (1 - eps), f"max|W| {np.abs(x).max()} vs bound {b}"
    else:
        # mean of W² (mean known to be 0) within K_SE standard errors of σ²
        m2, se = np.mean(x**2), np.std(x**2) / math.sqrt(n)
        assert abs(m2 - std**2) <= K_SE * se, f"E[W²] {m2} vs {std**2} ± {se}"


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name, mode, nonlinearity, a", CONFIGS)
def test_init_members_match_torch(name, mode, nonlinearity, a, shape):
    seed = _seed(name, mode, nonlinearity, a, shape)
    w = torch.empty((R, *shape))
    init_(w, name, mode=mode, nonlinearity=nonlinearity, a=a, generator=_gen(seed))
    ref = _torch_reference(name, mode, nonlinearity, a, shape, R, seed + 1, torch.float32)
    wn, rn = w.numpy().reshape(R, -1), ref.numpy().reshape(R, -1)
    pvals = [stats.ks_2samp(wn[r], rn[r]).pvalue for r in range(R)]
    assert min(pvals) > ALPHA, f"per-member KS p-values {pvals}"
    # pooled over members: 8× the sample, more power against a wrong scale
    assert stats.ks_2samp(wn.ravel(), rn.ravel()).pvalue > ALPHA
    _check_scale(wn, name, _torch_std(name, mode, nonlinearity, a, shape))


@pytest.mark.parametrize("name", list(TORCH_FN))
def test_init_float64_matches_torch(name):
    shape = (48, 40)
    seed = _seed("f64", name)
    w = torch.empty((R, *shape), dtype=torch.float64)
    out = init_(w, name, generator=_gen(seed))
    assert out.dtype == torch.float64 and out.data_ptr() == w.data_ptr()
    ref = _torch_reference(name, "fan_in", "leaky_relu", 0.0, shape, R, seed + 1, torch.float64)
    assert stats.ks_2samp(w.numpy().ravel(), ref.numpy().ravel()).pvalue > ALPHA
    _check_scale(w.numpy(), name, _torch_std(name, "fan_in", "leaky_relu", 0.0, shape))


# -- lecun_normal: no torch function; scipy's truncnorm is the reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_lecun_normal(shape, dtype):
    assert hinit.TRUNC_STD == pytest.approx(stats.truncnorm(-2, 2).std(), rel=1e-15)
    fan_in = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))[0]
    sigma = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    ref = stats.truncnorm(-2, 2, scale=sigma)
    w = torch.empty((R, *shape), dtype=dtype)
    init_(w, "lecun_normal", generator=_gen(_seed("lecun", shape, dtype)))
    wn = w.numpy().reshape(R, -1).astype(np.float64)
    pvals = [stats.kstest(wn[r], ref.cdf).pvalue for r in range(R)]
    assert min(pvals) > ALPHA, f"per-member KS p-values {pvals}"
    assert np.abs(wn).max() <= 2 * sigma * (1 + 1e-6)
    # realized variance 1/fan_in (mean known 0), within K_SE standard errors
    x = wn.ravel()
    m2, se = np.mean(x**2), np.std(x**2) / math.sqrt(x.size)
    assert abs(m2 - 1.0 / fan_in) <= K_SE * se


# -- orthogonal

ORTHO_SHAPES = [(64, 32), (32, 64), (16, 8, 3, 3), (64, 8, 3), (24, 24)]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("gain", [None, 2.0])
@pytest.mark.parametrize("shape", ORTHO_SHAPES, ids=str)
def test_orthogonal_members_are_orthogonal(shape, gain, dtype, tol):
    g = 1.0 if gain is None else gain
    w = torch.empty((R, *shape), dtype=dtype)
    init_(w, "orthogonal", gain=gain, generator=_gen(_seed("ortho", shape, gain, dtype)))
    rows, cols = shape[0], math.prod(shape[1:])
    flat = w.reshape(R, rows, cols).double()
    gram = flat @ flat.transpose(1, 2) if rows <= cols else flat.transpose(1, 2) @ flat
    eye = torch.eye(min(rows, cols), dtype=torch.float64).expand_as(gram)
    assert (gram - g**2 * eye).abs().max().item() <= tol * g**2
    for r in range(1, R):
        assert not torch.equal(w[0], w[r])
    # the Gram identity fixes Σ W² = g²·min(rows, cols) per member, so the entries' mean square
    # is g²/max(rows, cols) exactly (up to rounding), not only within a standard error
    assert (flat**2).mean().item() == pytest.approx(g**2 / max(rows, cols), rel=tol)
    assert weight_variance("orthogonal", shape, gain=g) == pytest.approx(
        g**2 / max(rows, cols), rel=1e-14
    )


@pytest.fixture
def one_thread():
    # thousands of tiny torch.nn.init.orthogonal_ calls are ~50× slower multi-threaded
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (3, 2, 2)], ids=str)
def test_orthogonal_single_entry_distribution_matches_torch(shape, one_thread):
    # Entries within one member are dependent, so pool one fixed entry over many independent
    # members: an iid sample of its marginal, compared with torch.nn.init.orthogonal_'s.
    n = 3000
    seed = _seed("ortho-entry", shape)
    w = torch.empty((n, *shape))
    init_(w, "orthogonal", generator=_gen(seed))
    ref = torch.empty((n, *shape))
    gen = _gen(seed + 1)
    for r in range(n):
        torch.nn.init.orthogonal_(ref[r], generator=gen)
    rows = shape[0]
    wf, rf = w.reshape(n, rows, -1).numpy(), ref.reshape(n, rows, -1).numpy()
    for i, j in [(0, 0), (rows - 1, -1)]:
        p = stats.ks_2samp(wf[:, i, j], rf[:, i, j]).pvalue
        assert p > ALPHA, f"entry ({i}, {j}): KS p = {p}"


# ---------------------------------------------------------------------------------------------
# independence, generator, dtype, arguments


@pytest.mark.parametrize("shape", [(64, 32), (16, 8, 3, 3)], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_members_are_independent(name, shape):
    w = torch.empty((R, *shape), dtype=torch.float64)
    init_(w, name, generator=_gen(_seed("indep", name, shape)))
    x0, x1 = w[0].numpy().ravel(), w[1].numpy().ravel()
    # sample correlation of independent members is ≈ N(0, 1/n): K_SE·SE = 5/√n, n the entries
    # that are not 0 by construction (delta_orthogonal's off-centre taps)
    support = (x0 != 0) | (x1 != 0)
    x0, x1 = x0[support], x1[support]
    r = np.corrcoef(x0, x1)[0, 1]
    assert abs(r) <= K_SE / math.sqrt(x0.size), f"corr(member 0, member 1) = {r}"


@pytest.mark.parametrize("name", NAMES)
def test_init_respects_generator(name):
    shape = (R, 12, 10)

    def draw(seed):
        return init_(torch.empty(shape), name, generator=_gen(seed))

    state = torch.get_rng_state()
    a, b, c = draw(7), draw(7), draw(8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not used


@pytest.mark.parametrize("name", [n for n in NAMES if n not in KAIMING])
def test_mode_and_nonlinearity_only_matter_for_kaiming(name):
    shape = (R, 40, 16) if name == "delta_orthogonal" else (R, 16, 40)  # it needs in ≤ out
    base = init_(torch.empty(shape), name, generator=_gen(3))
    other = init_(
        torch.empty(shape), name, mode="fan_out", nonlinearity="relu", a=0.5, generator=_gen(3)
    )
    assert torch.equal(base, other)


@pytest.mark.parametrize("name", NAMES)
def test_init_rejects_unstacked_weight(name):
    with pytest.raises(ValueError):
        init_(torch.empty(64, 32), name)
    with pytest.raises(ValueError):
        init_(torch.empty(32), name)


def test_init_rejects_unknown_scheme_listing_names():
    with pytest.raises(ValueError) as info:
        init_(torch.empty(R, 4, 3), "he_normal_")
    assert all(n in str(info.value) for n in NAMES)


GAIN_CASES = [
    # (name, gain, nonlinearity, expected std for member shape (40, 24))
    ("xavier_uniform", 3.0, "relu", 3.0 * math.sqrt(2 / 64)),
    ("xavier_normal", 3.0, "relu", 3.0 * math.sqrt(2 / 64)),
    ("kaiming_uniform", 0.5, "tanh", 0.5 / math.sqrt(24)),
    ("kaiming_normal", 0.5, "tanh", 0.5 / math.sqrt(24)),
    ("lecun_normal", 2.0, "relu", 1.0 / math.sqrt(24)),  # gain ignored: realized Var is 1/fan_in
    ("torch_default", 3.0, "relu", 1 / math.sqrt(3 * 24)),  # gain ignored: nn.Linear's default
]


@pytest.mark.parametrize("name, gain, nonlinearity, std", GAIN_CASES)
def test_explicit_gain_overrides(name, gain, nonlinearity, std):
    w = torch.empty((R, 40, 24), dtype=torch.float64)
    init_(w, name, gain=gain, nonlinearity=nonlinearity, generator=_gen(_seed("gain", name)))
    if name == "lecun_normal":
        assert np.abs(w.numpy()).max() <= 2 * std / hinit.TRUNC_STD * (1 + 1e-9)
        x = w.numpy().ravel()
        m2, se = np.mean(x**2), np.std(x**2) / math.sqrt(x.size)
        assert abs(m2 - std**2) <= K_SE * se
    else:
        _check_scale(w.numpy(), name, std)
