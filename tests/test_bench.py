"""The benchmark's naive baseline computes the same statistics as the harness, and draws its
weights from the same distributions; `python -m harness.bench --quick` runs end to end."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from harness.archs import conv
from harness.archs.mlp import propagate
from harness.bench import QUICK_GRID, naive_measure, naive_networks, startup, workload
from harness.sim import reference
from tests.conftest import small_spec


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_naive_loop_equals_batched_runner_on_its_own_weights(act):
    spec = small_spec(f"act={act}", "depth=4", "widths=[6,9,5,7,3]", "batch=5", "replicates=3",
                      "bias_std=0.2", "dtype=float64", "scheme=xavier_uniform")
    g = torch.Generator().manual_seed(0)
    nets = naive_networks(spec, g)
    g_inputs = torch.Generator().manual_seed(1)
    naive = naive_measure(spec, torch.Generator().manual_seed(1), nets=nets)
    # the same weights, stacked, and the same inputs/cotangents drawn in the same order
    lins = [reference.layers(net) for net in nets]
    weights = [torch.stack([lins[r][l].weight.detach() for r in range(3)]) for l in range(4)]
    biases = [torch.stack([lins[r][l].bias.detach() for r in range(3)]) for l in range(4)]
    xs, cots = [], []
    for _ in range(3):
        xs.append(torch.randn(5, 6, generator=g_inputs, dtype=torch.float64))
        cots.append(torch.randn(5, 3, generator=g_inputs, dtype=torch.float64))
    got = propagate(weights, biases, torch.stack(xs), torch.stack(cots), spec.activation)
    for k, v in naive.items():
        np.testing.assert_allclose(got[k].numpy(), v, rtol=1e-10, err_msg=k)


@pytest.mark.parametrize("overrides", [
    ("scheme=kaiming", "act=relu"), ("scheme=kaiming_uniform", "mode=fan_out", "act=tanh"),
    ("scheme=kaiming", "act=gelu"), ("scheme=kaiming", "scheme.gain=0.7"),
    ("scheme=xavier", "scheme.gain=1.3"), ("scheme=orthogonal",), ("scheme=lecun_normal",),
    ("scheme=torch_default",),
])
def test_naive_weights_have_the_harness_variance(overrides):
    """E[W²] of the naive loop's torch.nn.init weights equals weight_variance within 5 s.e."""
    spec = small_spec(*overrides, "depth=2", "widths=[96,64,48]", "replicates=40", "batch=1")
    nets = naive_networks(spec, torch.Generator().manual_seed(2))
    for l, var in enumerate(spec.weight_variances()):
        w = torch.cat([reference.layers(n)[l].weight.detach().ravel()
                       for n in nets]).double()
        m2, se = w.square().mean().item(), w.square().std().item() / math.sqrt(w.numel())
        assert abs(m2 - var) <= 5 * se, (l, m2, var)


def test_naive_conv_loop_equals_batched_conv_on_its_own_weights():
    spec = small_spec("arch=conv", "depth=3", "widths=[2,4,3,2]", "image=5", "batch=3",
                      "replicates=2", "dtype=float64", "act=tanh", "padding_mode=circular")
    nets = naive_networks(spec, torch.Generator().manual_seed(0))
    naive = naive_measure(spec, torch.Generator().manual_seed(1), nets=nets)
    convs = [reference.layers(net) for net in nets]
    weights = [torch.stack([convs[r][l].weight.detach() for r in range(2)]) for l in range(3)]
    g = torch.Generator().manual_seed(1)
    xs, cots = [], []
    for _ in range(2):
        xs.append(torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64))
        cots.append(torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64))
    got = conv.propagate(weights, None, torch.stack(xs), torch.stack(cots), spec.activation,
                         padding_mode="circular")
    for k in ("forward", "activation", "backward", "weight_grad"):
        np.testing.assert_allclose(got[k].numpy(), naive[k], rtol=1e-10, err_msg=k)


def test_workload_counts_forward_and_backward_matmuls():
    spec = small_spec("depth=3", "widths=[4,8,2,5]", "batch=7", "replicates=2")
    flops, rand = workload(spec)
    mm = [2 * 7 * 4 * 8, 2 * 7 * 8 * 2, 2 * 7 * 2 * 5]
    assert flops == 2 * (mm[0] + 2 * mm[1] + 2 * mm[2])
    assert rand == 2 * (32 + 16 + 10) + 2 * 7 * (4 + 5)
    # conv: forward, adjoint (l > 1) and the per-example weight gradient, P = 6 positions
    cs = small_spec("arch=conv", "depth=2", "widths=[2,3,4]", "image=6", "conv_dim=1", "batch=5",
                    "replicates=1")
    cf, cr = workload(cs)
    mm = [2 * 5 * 6 * 3 * 2 * 3, 2 * 5 * 6 * 4 * 3 * 3]
    assert cf == 2 * mm[0] + 3 * mm[1] and cr == (18 + 36) + 5 * 6 * (2 + 4)


def test_bench_quick_end_to_end(run_cli, tmp_path):
    res = run_cli("--quick", "--repeat", "1", "--out", str(tmp_path / "b"), module="harness.bench")
    assert res.returncode == 0, res.stderr
    df = pd.read_parquet(tmp_path / "b" / "bench.parquet")
    assert len(df) == len(QUICK_GRID) and set(df["arch"]) == {row[0] for row in QUICK_GRID}
    assert (df["speedup"] > 0).all() and (df["roofline_frac"] > 0).all()
    assert (tmp_path / "b" / "bench.png").is_file()
    assert "speedup" in res.stdout
    whole = pd.read_parquet(tmp_path / "b" / "whole_run.parquet").iloc[0]
    # the parts of a whole run are inside it; naive / whole is the ratio the table prints
    assert 0 < whole["measure_s"] and 0 < whole["beyond_s"] < whole["whole_s"]
    assert whole["naive_over_whole"] == pytest.approx(whole["naive_s"] / whole["whole_s"])
    assert "naive / whole run" in res.stdout and "beyond measure" in res.stdout


def test_startup_times_fresh_interpreters_against_the_first():
    """startup(): best wall time per command, the gap over the first; a failing command is an
    error, not a time."""
    st = startup(1, [("pass", ["-c", "pass"]), ("sleep", ["-c", "import time; time.sleep(0.3)"])])
    assert list(st["command"]) == ["pass", "sleep"]
    # a process that sleeps 0.3 s takes at least that; the gaps are over the first command's
    # time (the two start-ups' noise under load can exceed 0.3 s, so no bound on the gap itself)
    assert st["wall_s"].iloc[1] >= 0.3
    assert list(st["gap_s"]) == list(st["wall_s"] - st["wall_s"].iloc[0])
    with pytest.raises(RuntimeError, match="failed"):
        startup(1, [("bad", ["-c", "raise SystemExit(3)"])])


def test_bench_bad_device_is_one_line(run_cli):
    res = run_cli("--quick", "--dtype", "float16", module="harness.bench")
    assert res.returncode == 2 and res.stderr.strip().startswith("error: unknown dtype")


def test_limit_probe_keeps_the_best_rates_since_reset():
    from harness.bench import LimitProbe

    probe = LimitProbe("cpu", torch.float32, n=64, m=1 << 12)
    probe.sample()
    assert probe.limits.flops > 0 and probe.limits.rng > 0
    probe.t_mm, probe.t_rng = 1e-9, 1e-9  # as if a moment had been impossibly fast
    probe.sample()  # a real (slower) sample must not replace the best times
    assert probe.limits.flops == 2 * 64**3 / 1e-9 and probe.limits.rng == (1 << 12) / 1e-9
    probe.reset()
    assert math.isinf(probe.t_mm) and math.isinf(probe.t_rng)
