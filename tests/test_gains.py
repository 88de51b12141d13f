"""`python -m harness.gains`: every row of the table checked by a short simulation.

One layer of a network, simulated directly (not through the runner): pre-activations h¹ ~
N(0, q) exactly, W ~ N(0, g²/n), h² = W φ(h¹), a Gaussian cotangent r at h², δ¹ = φ'(h¹) ⊙ Wᵀr.
Then E[mean (h²)²] = g² V_φ(q) and E[mean (δ¹)²] = g² D_φ(q) exactly, at any width, so each
claim of a row is a comparison within the replicate standard error:

- forward-exact gain: q = 1 stays 1;   backward-exact gain: δ keeps its size at q = 1;
- 1/std(φ(z)): the sample variance of g·φ(z) is 1 (Monte Carlo, its own standard error);
- at torch's gain: q* maps to itself and δ grows by χ_1 (where q* is finite); where the table
  says the signal dies, one layer shrinks q = 1; where q diverges, it grows q = 1 and q = 10.

Bonferroni over all comparisons at a family-wise α = 1e-3 (z_crit of test_theory.py).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from harness import gains
from harness.core import activations
from tests.test_theory import z_crit

N, B, R = 512, 64, 8
M = 5 * len(activations.NAMES)  # comparisons in this file


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return gains.table()


def one_layer(act, g: float, q: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per replicate: mean (h²)² and mean (δ¹)² of one simulated layer (module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    h1 = math.sqrt(q) * torch.randn(R, B, N, generator=gen, dtype=torch.float64)
    W = g / math.sqrt(N) * torch.randn(R, N, N, generator=gen, dtype=torch.float64)
    r = torch.randn(R, B, N, generator=gen, dtype=torch.float64)
    h2 = torch.bmm(act.phi(h1), W.transpose(1, 2))
    d1 = torch.bmm(r, W) * act.dphi(h1)
    return h2.square().mean((1, 2)).numpy(), d1.square().mean((1, 2)).numpy()


def _z(values: np.ndarray, expected: float) -> float:
    return float((values.mean() - expected) / (values.std(ddof=1) / math.sqrt(len(values))))


def test_table_has_a_row_per_activation_and_torch_gains(table):
    assert list(table["act"]) == list(activations.NAMES)
    for row in table.itertuples():
        kind = activations.REGISTRY[row.act]
        if kind.gain_name is not None:
            param = activations.get(row.act).gain_param
            assert row.torch_gain == torch.nn.init.calculate_gain(kind.gain_name, param)
        else:  # kaiming_*'s default nonlinearity
            assert not row.torch_gain_known
            assert row.torch_gain == torch.nn.init.calculate_gain("leaky_relu", 0)


@pytest.mark.parametrize("name", activations.NAMES)
def test_row_against_simulation(name, table):
    row = table.set_index("act").loc[name]
    act = activations.get(name)
    seed = 100 * activations.NAMES.index(name)
    zc = z_crit(M)

    fwd, _ = one_layer(act, row.forward_exact_gain, 1.0, seed)
    assert abs(_z(fwd, 1.0)) <= zc, ("forward-exact", fwd.mean())
    _, bwd = one_layer(act, row.backward_exact_gain, 1.0, seed + 1)
    assert abs(_z(bwd, 1.0)) <= zc, ("backward-exact", bwd.mean())

    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(seed + 2),
                    dtype=torch.float64)
    y = row.inv_std_gain * act.phi(z)
    dev2 = (y - y.mean()) ** 2
    se = dev2.std().item() / math.sqrt(len(z))
    assert abs(dev2.mean().item() - 1.0) <= zc * se, ("1/std", dev2.mean().item())

    g = row.torch_gain
    if "dies" in row.note:  # q* = 0: one layer shrinks q = 1, and χ_1 = g² φ'(0)²
        fwd, _ = one_layer(act, g, 1.0, seed + 3)
        assert fwd.mean() + zc * fwd.std(ddof=1) / math.sqrt(R) < 1.0
        _, bwd = one_layer(act, g, 1e-8, seed + 4)
        assert abs(_z(bwd, row.chi_1)) <= zc, ("chi_1 at q* = 0", bwd.mean(), row.chi_1)
    elif np.isnan(row.q_star):  # q diverges: one layer grows q, at q = 1 and at q = 10
        for k, q in enumerate((1.0, 10.0)):
            fwd, _ = one_layer(act, g, q, seed + 3 + k)
            assert fwd.mean() - zc * fwd.std(ddof=1) / math.sqrt(R) > q, (q, fwd.mean())
    else:
        fwd, bwd = one_layer(act, g, row.q_star, seed + 3)
        assert abs(_z(fwd, row.q_star)) <= zc, ("q*", fwd.mean(), row.q_star)
        assert abs(_z(bwd, row.chi_1)) <= zc, ("chi_1", bwd.mean(), row.chi_1)


def test_a_wrong_gain_is_rejected():
    """The comparison can fail: torch's tanh gain 5/3 is not forward-exact (q = 1 grows)."""
    fwd, _ = one_layer(activations.get("tanh"), 5 / 3, 1.0, 7)
    assert abs(_z(fwd, 1.0)) > z_crit(M)


def test_cli_writes_markdown_and_parquet(tmp_path, capsys):
    out = gains.main(["--out", str(tmp_path / "g")])
    printed = capsys.readouterr().out
    md = (out / "gains.md").read_text()
    assert md in printed
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| act")]
    assert [r.split("|")[1].strip() for r in rows] == list(activations.NAMES)
    df = pd.read_parquet(out / "gains.parquet")
    assert list(df.columns) == gains.COLUMNS and len(df) == len(activations.NAMES)


def test_cli_bad_arguments_are_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for argv in (["--bogus"], ["--out", str(tmp_path / "file")]):
        with pytest.raises(SystemExit) as exc:
            gains.main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ")
