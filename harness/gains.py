"""`python -m harness.gains [--out DIR]`: an audit of torch's gain table against the theory.

For every registered activation φ (default parameters), with z ~ N(0, 1):

=====================  ================================================================
column                 meaning
=====================  ================================================================
torch_gain             ``torch.nn.init.calculate_gain`` for φ; where torch does not know φ
                       (elu, gelu, silu, softplus) the gain kaiming_* falls back to,
                       calculate_gain('leaky_relu', 0) = √2 (``torch_gain_known`` False)
forward_exact_gain     V_φ(1)^(-1/2): σ_w² = g² makes q = 1 a fixed point (docs/theory.md, "Gains")
backward_exact_gain    D_φ(1)^(-1/2): σ_w² D_φ(1) = 1, gradients keep their size at q = 1
inv_std_gain           1/std(φ(z)): φ(z)·g has unit variance (mean removed; the "variance
                       of the activation" rule of thumb)
q_star                 the fixed point of q ↦ g² V_φ(q) reached from q¹ = g² (unit-variance
                       inputs, square layers, no bias) at g = torch_gain
chi_1                  σ_w² D_φ(q*) at g = torch_gain: > 1 gradients explode, < 1 vanish
=====================  ================================================================

The table is printed and written as ``gains.md`` and ``gains.parquet`` into ``--out``
(default ``results/gains`` under the current directory). Every row is checked by a short
simulation in tests/test_gains.py.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from harness.cli import ArgumentParser
from harness.core import activations
from harness.core.init import calculate_gain
from harness.core.quadrature import gaussian_expectation
from harness.outputs.results import atomic_write_bytes, write_parquet
from harness.theory import criticality

COLUMNS = ["act", "torch_gain", "torch_gain_known", "forward_exact_gain", "backward_exact_gain",
           "inv_std_gain", "q_star", "chi_1", "note"]


def torch_gain(act: activations.Activation) -> tuple[float, bool]:
    """(gain, known): calculate_gain(φ's name, its slope) where torch knows φ; else the
    √2 that kaiming_* use by default (nonlinearity='leaky_relu', a=0)."""
    if act.kind.gain_name is not None:
        return float(calculate_gain(act.kind.gain_name, act.gain_param)), True
    return float(calculate_gain("leaky_relu", 0.0)), False


def row(act: activations.Activation) -> dict[str, object]:
    """One row of the table (see the module docstring)."""
    g, known = torch_gain(act)
    mean = float(gaussian_expectation(act.phi, 1.0))
    var = float(act.V(1.0)) - mean * mean
    c = criticality.analyze(act, g * g, 0.0, q_start=g * g)
    return {
        "act": act.name,
        "torch_gain": g,
        "torch_gain_known": known,
        "forward_exact_gain": 1.0 / math.sqrt(float(act.V(1.0))),
        "backward_exact_gain": 1.0 / math.sqrt(float(act.D(1.0))),
        "inv_std_gain": 1.0 / math.sqrt(var),
        "q_star": np.nan if c.q_star is None else c.q_star,
        "chi_1": np.nan if c.chi_1 is None else c.chi_1,
        "note": c.note.strip("; "),
    }


def table() -> pd.DataFrame:
    """The gains table, one row per registered activation at its default parameters."""
    return pd.DataFrame([row(activations.get(name)) for name in activations.NAMES],
                        columns=COLUMNS)


def to_markdown(df: pd.DataFrame) -> str:
    """The table as GitHub markdown (4 significant digits; † = torch has no gain for φ)."""
    head = ("| act | torch gain | forward-exact V(1)^-½ | backward-exact D(1)^-½ | 1/std φ(z) "
            "| q* at torch gain | χ₁ at torch gain |")
    lines = [head, "|" + "---|" * 7]
    for r in df.itertuples():
        tg = f"{r.torch_gain:.4g}" + ("" if r.torch_gain_known else " †")
        q = "∞ (q diverges)" if np.isnan(r.q_star) else f"{r.q_star:.4g}"
        if "neutral" in r.note:
            q += " (neutral)"
        elif "dies" in r.note:
            q = "0 (signal dies)"
        chi = "n/a" if np.isnan(r.chi_1) else f"{r.chi_1:.4g}"
        lines.append(f"| {r.act} | {tg} | {r.forward_exact_gain:.4g} | "
                     f"{r.backward_exact_gain:.4g} | {r.inv_std_gain:.4g} | {q} | {chi} |")
    lines.append("")
    lines.append("† torch.nn.init.calculate_gain does not know this activation; kaiming_* then "
                 "use their default, calculate_gain('leaky_relu', 0) = √2.")
    lines.append("q* from unit-variance inputs (q¹ = g²), square layers, no bias; neutral: every "
                 "q is a fixed point (relu family at σ_w² D = 1), q* = q¹.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    """Print the table and write gains.md and gains.parquet into --out; returns the folder."""
    parser = ArgumentParser(prog="python -m harness.gains", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/gains", help="output folder")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    out = parser.check_out(args.out, folder=True)
    df = table()
    md = to_markdown(df)
    print(md, end="")
    atomic_write_bytes(out / "gains.md", md.encode())
    write_parquet(df, out / "gains.parquet")
    print(f"written: {out / 'gains.md'}, {out / 'gains.parquet'}")
    return out


if __name__ == "__main__":
    main()
