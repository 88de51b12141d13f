"""The batched conv ensemble against plain per-network nn.Sequential stacks of nn.Conv1d/2d with
autograd (forward values, gradients w.r.t. the pre-activations, per-example weight gradients)
on the same weights, in float64; conv fans against torch's; delta_orthogonal's centre tap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.archs import conv
from harness.core.init import fans, init_, resolve_gain, tap_variances, weight_variance
from harness.sim import reference
from harness.sim.runner import bytes_per_replicate, chunk_size, measure, sample_chunk
from tests.conftest import small_spec

TINY = ["arch=conv", "depth=3", "widths=[2,3,4,3]", "image=5", "batch=3", "replicates=2",
        "bias_std=0.3", "dtype=float64", "device=cpu"]


def autograd_pass(net, x, cot):
    """Pre-activations h^l and δ^l = ∂(Σ y·r)/∂h^l of one network, by autograd."""
    hs = []

    def keep(module, inputs, output):
        output.retain_grad()
        hs.append(output)

    hooks = [m.register_forward_hook(keep) for m in reference.layers(net)]
    y = net(x)
    for h in hooks:
        h.remove()
    (y * cot).sum().backward()
    return [h.detach() for h in hs], [h.grad for h in hs]


def per_example_weight_grads(net, x, cot):
    """mean_b mean (∂loss_b/∂W^l)² per layer, one example at a time through autograd."""
    convs = reference.layers(net)
    out = np.zeros((x.shape[0], len(convs)))
    for b in range(x.shape[0]):
        net.zero_grad()
        (net(x[b : b + 1]) * cot[b : b + 1]).sum().backward()
        out[b] = [c.weight.grad.square().mean().item() for c in convs]
    return out.mean(0)


CASES = [
    (2, "zeros", "relu"),
    (2, "circular", "tanh"),
    (1, "zeros", "tanh"),
    (1, "circular", "relu"),
    (2, "zeros", "gelu"),
]


@pytest.mark.parametrize(("conv_dim", "padding_mode", "act_name"), CASES)
def test_batched_conv_equals_sequential_autograd(conv_dim, padding_mode, act_name):
    kernel = 3 if conv_dim == 2 else 5
    spec = small_spec(*TINY, f"conv_dim={conv_dim}", f"padding_mode={padding_mode}",
                      f"act={act_name}", f"kernel={kernel}", "scheme=xavier_uniform")
    weights, biases, x0, cot = sample_chunk(spec, spec.replicates, torch.Generator().manual_seed(1))
    act, R, B, L = spec.activation, spec.replicates, spec.batch, spec.depth
    nets = reference.ensemble(spec, weights, biases)  # nn.Conv{1,2}d, padding (k-1)/2
    ref = [autograd_pass(nets[r], x0[r], cot[r]) for r in range(R)]

    def members(t):  # (B, R·C, *S) -> per replicate (B, C, *S)
        return t.view(B, R, -1, *t.shape[2:]).transpose(0, 1)

    # the batched forward: one grouped conv per layer, values equal every network's
    x = x0.transpose(0, 1).reshape(B, -1, *x0.shape[3:])
    hs = []
    for l, W in enumerate(weights):
        h = conv.conv(x, W, padding_mode, biases[l])
        hs.append(h)
        for r in range(R):
            torch.testing.assert_close(members(h)[r], ref[r][0][l], rtol=1e-12, atol=1e-13)
        x = act.phi(h)
    # the explicit backward through the adjoint conv equals autograd's ∂loss/∂h^l
    delta = cot.transpose(0, 1).reshape(B, -1, *cot.shape[3:])
    for l in range(L - 1, -1, -1):
        if l < L - 1:
            delta = conv.conv_adjoint(delta, weights[l + 1], padding_mode) * act.dphi(hs[l])
        for r in range(R):
            torch.testing.assert_close(members(delta)[r], ref[r][1][l], rtol=1e-12, atol=1e-13)

    # every statistic of propagate against the same quantities from the reference
    got = conv.propagate(weights, biases, x0, cot, act, padding_mode)
    for r in range(R):
        h_ref, d_ref = ref[r]
        for l in range(L):
            h, d = h_ref[l], d_ref[l]  # (B, C, *S)
            flat = h.flatten(2)  # (B, C, P)
            want = {
                "forward": h.square().mean(),
                "backward": d.square().mean(),
                "channel_mean_sq": flat.mean((0, 2)).square().mean(),
                "channel_var": flat.var((0, 2), correction=0).mean(),
                conv.POSITION + "forward": flat.square().mean((0, 1)),
                conv.POSITION + "backward": d.flatten(2).square().mean((0, 1)),
            }
            if l < L - 1:
                want["activation"] = act.phi(h).square().mean()
            for k, v in want.items():
                torch.testing.assert_close(got[k][r, l], v, rtol=1e-11, atol=1e-14, msg=k)
        wg = per_example_weight_grads(nets[r], x0[r], cot[r])
        np.testing.assert_allclose(got["weight_grad"][r].numpy(), wg, rtol=1e-11)


def test_weight_grad_chunking_does_not_change_the_result():
    spec = small_spec(*TINY, "act=relu")
    weights, biases, x0, cot = sample_chunk(spec, 2, torch.Generator().manual_seed(4))
    whole = conv.propagate(weights, biases, x0, cot, spec.activation, "zeros")
    one_at_a_time = conv.propagate(weights, biases, x0, cot, spec.activation, "zeros",
                                   max_elements=1)
    torch.testing.assert_close(whole["weight_grad"], one_at_a_time["weight_grad"])


SCHEMES = ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal",
           "delta_orthogonal", "lecun_normal", "torch_default"]


def _torch_variance(scheme, W, mode, gain):
    """Var(W) that the torch.nn.init function would give the member W, from torch's own fans."""
    fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(W)
    if scheme.startswith("xavier"):
        return 2 * gain**2 / (fan_in + fan_out)
    if scheme.startswith("kaiming"):
        return gain**2 / (fan_in if mode == "fan_in" else fan_out)
    if scheme == "torch_default":
        return 1 / (3 * fan_in)
    if scheme == "lecun_normal":
        return 1 / fan_in
    if scheme == "orthogonal":  # orthogonal_ flattens to (out, in·∏k)
        return gain**2 / max(W.shape[0], W[0].numel())
    return gain**2 / fan_out  # delta_orthogonal: g²/out on the centre tap, so g²/fan_out overall


@pytest.mark.parametrize("conv_dim, kernel", [(2, 3), (1, 5)])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_conv_fans_equal_torch_for_each_member(scheme, mode, conv_dim, kernel):
    spec = small_spec("arch=conv", "depth=2", "widths=[3,6,8]", "image=5", "replicates=4",
                      f"conv_dim={conv_dim}", f"kernel={kernel}", f"scheme={scheme}",
                      f"mode={mode}", "dtype=float64")
    weights, *_ = sample_chunk(spec, spec.replicates, torch.Generator().manual_seed(0))
    for l, W in enumerate(weights):
        assert tuple(W.shape[1:]) == spec.weight_shapes[l] == (
            spec.widths[l + 1], spec.widths[l], *(kernel,) * conv_dim)
        for r in range(spec.replicates):
            assert fans(spec.weight_shapes[l]) == torch.nn.init._calculate_fan_in_and_fan_out(W[r])
            assert spec.weight_variances()[l] == pytest.approx(
                _torch_variance(scheme, W[r], mode, spec.gain), rel=1e-14)


def test_delta_orthogonal_has_an_orthogonal_centre_tap():
    gain = 1.3
    for shape in [(8, 8, 3, 3), (12, 5, 5, 5), (6, 4, 3), (7, 7)]:
        W = init_(torch.empty(6, *shape, dtype=torch.float64), "delta_orthogonal", gain=gain,
                  generator=torch.Generator().manual_seed(2))
        centre = tuple(k // 2 for k in shape[2:])
        H = W[(slice(None), slice(None), slice(None), *centre)]  # (R, out, in)
        gram = H.transpose(1, 2) @ H
        eye = torch.eye(shape[1], dtype=torch.float64).expand_as(gram)
        torch.testing.assert_close(gram, gain**2 * eye, rtol=0, atol=1e-12)
        rest = W.clone()
        rest[(slice(None), slice(None), slice(None), *centre)] = 0
        assert torch.count_nonzero(rest) == 0
        assert not torch.equal(H[0], H[1])
        # every entry's mean square is the scheme's variance, exactly: Σ H² = g²·in per member
        assert W.square().mean().item() == pytest.approx(
            weight_variance("delta_orthogonal", shape, gain=gain), rel=1e-12)
    with pytest.raises(ValueError, match="in ≤ out"):
        init_(torch.empty(2, 4, 8, 3, 3), "delta_orthogonal")


def test_delta_orthogonal_linear_stack_preserves_every_position_exactly():
    """Square delta-orthogonal layers act as an orthogonal map at each position: with a linear
    activation, every network keeps each position's channel norm, so the per-position forward
    moment is the same at every layer (to rounding), and no border deficit appears."""
    spec = small_spec("arch=conv", "scheme=delta_orthogonal", "act=linear", "depth=4",
                      "width=6", "image=5", "batch=3", "replicates=2", "dtype=float64")
    m = measure(spec, progress=False)
    f = m.positions["forward"]  # (R, L, 5, 5)
    np.testing.assert_allclose(f, np.broadcast_to(f[:, :1], f.shape), rtol=1e-12)
    assert f[:, 0].std() > 0.05 * f[:, 0].mean()  # positions differ: the check above is sharp


def test_conv_memory_accounts_for_positions_and_chunks():
    small = small_spec("arch=conv", "depth=4", "width=8", "image=8", "batch=4", "replicates=6")
    big = small_spec("arch=conv", "depth=4", "width=8", "image=16", "batch=4", "replicates=6")
    # activations dominate: 4× the positions is nearly 4× the bytes
    assert 3.5 < bytes_per_replicate(big) / bytes_per_replicate(small) <= 4
    budget = bytes_per_replicate(small) * 2.5 / 2**20
    spec = small_spec("arch=conv", "depth=4", "width=8", "image=8", "batch=4", "replicates=6",
                      f"memory_budget_mb={budget}")
    assert chunk_size(spec) == 2
    m = measure(spec, progress=False)
    assert m.chunk_size == 2
    for k, v in m.values.items():
        assert v.shape[0] == 6 and np.isfinite(v).all(), k
    assert m.positions["forward"].shape == (6, 4, 8, 8)


def test_conv_stats_do_not_depend_on_the_chunking():
    """Same weights and inputs, chunked or not: identical statistics (the draw order is per
    chunk, so compare through propagate on slices of one draw)."""
    spec = small_spec("arch=conv", "depth=3", "width=4", "image=6", "batch=2", "replicates=4",
                      "dtype=float64")
    weights, _, x0, cot = sample_chunk(spec, 4, torch.Generator().manual_seed(3))
    whole = conv.propagate(weights, None, x0, cot, spec.activation, "zeros")
    for lo, hi in [(0, 1), (1, 4)]:
        part = conv.propagate([W[lo:hi] for W in weights], None, x0[lo:hi], cot[lo:hi],
                              spec.activation, "zeros")
        for k in whole:
            torch.testing.assert_close(part[k], whole[k][lo:hi], rtol=1e-12, atol=1e-15, msg=k)


@pytest.mark.gpu
def test_conv_on_cuda_equals_cpu():
    spec = small_spec(*TINY, "act=tanh", "padding_mode=circular")
    weights, biases, x0, cot = sample_chunk(spec, 2, torch.Generator().manual_seed(5))
    cpu = conv.propagate(weights, biases, x0, cot, spec.activation, "circular")
    gpu = conv.propagate([W.cuda() for W in weights], [b.cuda() for b in biases], x0.cuda(),
                         cot.cuda(), spec.activation, "circular")
    for k in cpu:
        torch.testing.assert_close(gpu[k].cpu(), cpu[k], rtol=1e-10, atol=1e-13, msg=k)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_tap_variances_are_the_sampled_ones(scheme):
    """The per-tap E[W²] the theory uses equals the sampler's, tap by tap (pooled over 64
    members, within 5 standard errors; exactly 0 off the centre for delta_orthogonal)."""
    shape = (8, 4, 3, 3)
    W = init_(torch.empty(64, *shape, dtype=torch.float64), scheme, gain=1.3,
              generator=torch.Generator().manual_seed(9))
    sq = W.square().permute(3, 4, 0, 1, 2).reshape(3, 3, -1).numpy()  # (k, k, entries)
    g = resolve_gain(scheme, gain=1.3)  # 1.3, except for the schemes that take no gain
    want = tap_variances(scheme, shape, gain=g)
    assert want.shape == (3, 3)
    assert want.mean() == pytest.approx(weight_variance(scheme, shape, gain=g), rel=1e-14)
    se = sq.std(-1) / np.sqrt(sq.shape[-1])
    assert np.all(np.abs(sq.mean(-1) - want) <= 5 * se + 1e-15), (sq.mean(-1), want)
