"""The batched runner against a plain per-network nn.Sequential + autograd on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.archs.mlp import propagate
from harness.core import activations
from harness.sim import reference
from harness.sim.runner import bytes_per_replicate, chunk_size, measure, sample_chunk
from tests.conftest import small_spec


def reference_stats(spec, weights, biases, x0, cot):
    """One reference nn.Sequential per replicate (`harness.sim.reference`); autograd for δ;
    per-example weight grads one by one."""
    act = spec.activation
    R, L = x0.shape[0], len(weights)
    out = {k: np.zeros((R, L)) for k in ("forward", "backward", "weight_grad")}
    out["activation"] = np.zeros((R, L - 1))
    for r, net in enumerate(reference.ensemble(spec, weights, biases)):
        hs = []

        def keep(module, inputs, output, hs=hs):
            output.retain_grad()
            hs.append(output)

        hooks = [m.register_forward_hook(keep) for m in reference.layers(net)]
        y = net(x0[r])
        for h in hooks:
            h.remove()
        (y * cot[r]).sum().backward()
        for l, h in enumerate(hs):
            out["forward"][r, l] = h.detach().square().mean()
            out["backward"][r, l] = h.grad.square().mean()
            if l < L - 1:
                out["activation"][r, l] = act.phi(h.detach()).square().mean()
        # per-example weight gradients, explicitly, one example at a time
        linears = reference.layers(net)
        per_example = np.zeros((x0.shape[1], L))
        for b in range(x0.shape[1]):
            net.zero_grad()
            (net(x0[r, b : b + 1]) * cot[r, b : b + 1]).sum().backward()
            per_example[b] = [lin.weight.grad.square().mean().item() for lin in linears]
        out["weight_grad"][r] = per_example.mean(0)
    return out


@pytest.mark.parametrize("act_name", activations.NAMES)
def test_batched_equals_sequential_autograd(act_name):
    spec = small_spec(f"act={act_name}", "depth=3", "widths=[5,7,4,6]", "batch=4",
                      "replicates=3", "bias_std=0.3", "dtype=float64", "scheme=xavier_uniform",
                      "device=cpu")
    g = torch.Generator().manual_seed(1)
    weights, biases, x0, cot = sample_chunk(spec, spec.replicates, g)
    got = propagate(weights, biases, x0, cot, spec.activation)
    want = reference_stats(spec, weights, biases, x0, cot)
    for k, v in want.items():
        np.testing.assert_allclose(got[k].numpy(), v, rtol=1e-10, atol=1e-14, err_msg=k)


def test_no_bias_path_equals_zero_bias():
    spec = small_spec("depth=4", "width=6", "batch=5", "replicates=2", "dtype=float64")
    g = torch.Generator().manual_seed(0)
    weights, _, x0, cot = sample_chunk(spec, 2, g)
    zeros = [torch.zeros(2, W.shape[1], dtype=W.dtype) for W in weights]
    a = propagate(weights, None, x0, cot, spec.activation)
    b = propagate(weights, zeros, x0, cot, spec.activation)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_chunking_respects_budget_and_keeps_every_replicate():
    spec = small_spec("depth=6", "width=64", "batch=32", "replicates=10", "memory_budget_mb=0.2")
    size = chunk_size(spec)
    assert 1 <= size < spec.replicates
    m = measure(spec, progress=False)
    assert m.chunk_size == size
    for k, v in m.values.items():
        assert v.shape[0] == spec.replicates and np.isfinite(v).all(), k


def test_same_seed_same_numbers_other_seed_other_numbers():
    a = measure(small_spec("depth=3", "width=8", "batch=4", "replicates=2"), progress=False)
    b = measure(small_spec("depth=3", "width=8", "batch=4", "replicates=2"), progress=False)
    c = measure(small_spec("depth=3", "width=8", "batch=4", "replicates=2", "seed=1"),
                progress=False)
    np.testing.assert_array_equal(a.values["forward"], b.values["forward"])
    assert not np.array_equal(a.values["forward"], c.values["forward"])


def test_overflow_is_kept_not_raised():
    m = measure(small_spec("depth=200", "width=8", "batch=4", "replicates=2", "scheme.gain=8",
                           "act=linear"), progress=False)
    fwd = m.values["forward"]
    assert np.isfinite(fwd[:, 0]).all() and not np.isfinite(fwd[:, -1]).any()


def test_replicate_r_is_the_same_network_whatever_the_chunking_threads_or_count():
    """Each replicate draws from its own stream (seed, r): chunk size (memory budget), torch's
    thread count and the number of replicates do not change any replicate's numbers."""
    base = ("depth=5", "width=24", "batch=6", "bias_std=0.1", "dtype=float64", "act=tanh")
    threads = torch.get_num_threads()
    try:  # several threads here (an xdist worker runs at 1), one below
        torch.set_num_threads(max(2, threads))
        whole = measure(small_spec(*base, "replicates=5"), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert whole.chunk_size == 5
    budget = 1.5 * bytes_per_replicate(small_spec(*base, "replicates=5")) / 2**20  # chunks of 1
    chunked = measure(small_spec(*base, "replicates=5", f"memory_budget_mb={budget}"), progress=False)
    assert chunked.chunk_size < 5
    fewer = measure(small_spec(*base, "replicates=3"), progress=False)
    try:
        torch.set_num_threads(1)
        serial = measure(small_spec(*base, "replicates=5"), progress=False)
    finally:
        torch.set_num_threads(threads)
    for k, v in whole.values.items():
        np.testing.assert_allclose(chunked.values[k], v, rtol=1e-12, err_msg=k)
        np.testing.assert_allclose(serial.values[k], v, rtol=1e-12, err_msg=k)
        np.testing.assert_allclose(fewer.values[k], v[:3], rtol=1e-12, err_msg=k)
    assert len({tuple(r) for r in whole.values["forward"]}) == 5  # and they are distinct networks
