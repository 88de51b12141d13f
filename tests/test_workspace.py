"""harness.sim.workspace: reused buffers change where tensors live, never what the runner computes."""

from __future__ import annotations

import threading

import numpy as np
import torch

from harness.archs.mlp import propagate
from harness.sim import workspace
from harness.sim.runner import measure, replicate_generators, sample_chunk
from harness.sim.workspace import Workspace
from tests.conftest import small_spec


def test_take_grows_reuses_and_keeps_names_apart():
    ws = Workspace()
    a = ws.take("a", (2, 3), torch.float32, "cpu")
    assert a.shape == (2, 3)
    small = ws.take("a", (4,), torch.float32, "cpu")
    assert small.data_ptr() == a.data_ptr()  # same buffer, reused
    b = ws.take("b", (2, 3), torch.float32, "cpu")
    assert b.data_ptr() != a.data_ptr()
    big = ws.take("a", (10, 10), torch.float32, "cpu")  # too small: a new, larger buffer
    assert big.shape == (10, 10) and ws.nbytes() == 4 * (100 + 6)
    assert ws.take("a", (2,), torch.float64, "cpu").dtype == torch.float64  # per dtype
    ws.clear()
    assert ws.nbytes() == 0


def _values(m):
    return {k: v.copy() for k, v in m.values.items()}


def test_measure_is_bitwise_the_same_cold_warm_and_after_other_sizes():
    specs = [small_spec("act=relu", "depth=6", "width=32", "batch=8", "replicates=5"),
             small_spec("act=tanh", "depth=4", "width=64", "batch=16", "replicates=3",
                        "bias_std=0.1"),
             small_spec("act=relu", "scheme=orthogonal", "depth=5", "widths=[8,16,4,16,8,2]",
                        "batch=3", "replicates=2")]
    cold = []
    for spec in specs:
        workspace.release()
        cold.append(_values(measure(spec, progress=False)))
    for _ in range(2):  # warm, in every order of sizes
        for spec, want in zip(specs, cold, strict=True):
            got = _values(measure(spec, progress=False))
            for k in want:
                np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # and the same as the runner's functions called without any workspace
    spec = specs[0]
    w, b, x0, cot = sample_chunk(spec, spec.replicates, replicate_generators(spec, 0, 5))
    plain = propagate(w, b, x0, cot, spec.activation)
    for k, v in plain.items():
        np.testing.assert_array_equal(v.double().numpy(), cold[0][k], err_msg=k)


def test_each_thread_has_its_own_workspace():
    seen = []

    def grab():
        seen.append(workspace.current())

    t = threading.Thread(target=grab)
    t.start()
    t.join()
    assert seen[0] is not workspace.current()


def test_release_frees_the_buffers():
    measure(small_spec("depth=3", "width=16", "batch=4", "replicates=2"), progress=False)
    assert workspace.current().nbytes() > 0
    workspace.release()
    assert workspace.current().nbytes() == 0
