"""The architecture registry: a toy third architecture, registered here, gets its own path
everywhere (shapes, quantities, propagation, theory, reference layers), one-line errors for every
capability it does not support, "n/a" annotations, and never the MLP's code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from harness import archs
from harness.archs.base import Architecture
from harness.cli import compose_config
from harness.core.capabilities import CAPABILITIES, JACOBIAN
from harness.core.spec import ConfigError, Spec
from harness.run import execute
from harness.sim import reference
from harness.sim.runner import measure
from harness.theory import criticality, finite_width
from harness.theory.meanfield import predict
from tests.conftest import expect_one_line_error

#: what the toy's propagation writes: a value no real network measures, so a fallback to the
#: MLP's (or conv's) code would show
MARK = 7.25


class Toy(Architecture):
    """Dense layers whose weights have a trailing axis of 2 (so its shapes are its own), that
    measure only `forward` (filled with MARK) and predict MARK too."""

    name = "toy"
    label = "toys"
    capabilities = frozenset()
    all_quantities = ("forward",)

    def __init__(self) -> None:
        self.calls = 0

    def config(self, cfg):
        return {}

    def kernel_shape(self, spec):
        return (2,)

    def quantities(self, spec):
        return ("forward",)

    def propagate(self, spec, weights, biases, x0, cotangent, *, tick=None, workspace=None):
        self.calls += 1
        assert [tuple(W.shape[1:]) for W in weights] == spec.weight_shapes
        return {"forward": x0.new_full((x0.shape[0], spec.depth), MARK)}

    def bytes_per_replicate(self, spec):
        return 1

    def predict(self, spec, weight_variances=None):
        return {"forward": np.full(spec.depth, MARK)}

    def layer(self, spec, n_in, n_out, *, bias, device, dtype):
        return nn.Bilinear(n_in, 2, n_out, bias=bias, device=device, dtype=dtype)


@pytest.fixture
def toy(monkeypatch):
    entry = Toy()
    monkeypatch.setitem(archs.REGISTRY, "toy", entry)
    return entry


BASE = ["arch=toy", "depth=3", "width=4", "batch=3", "replicates=2", "device=cpu"]


def test_unknown_arch_lists_the_registry(toy):
    allowed = "mlp, conv, resmlp, resconv, toy"
    with pytest.raises(ConfigError, match=rf"^unknown arch 'resnet'; allowed: {allowed}$"):
        archs.get("resnet")


@pytest.mark.parametrize(("overrides", "message"), [
    (["jacobian=1"], "jacobian is implemented for arch=mlp, arch=conv, arch=resmlp only; for arch=toy "
                     "leave it at 0 (got jacobian=1)"),
    (["scheme=lsuv"], "scheme lsuv calibrates MLPs only; for arch=toy choose another scheme"),
    (["input_corr=0.5"], "input_corr is implemented for arch=mlp, arch=resmlp only; for arch=toy "
                         "leave it at 0 (got 0.5)"),
])
def test_unsupported_requests_are_one_line_errors(toy, overrides, message, capsys):
    expect_one_line_error([*BASE, *overrides], message, capsys)
    # and the same requests are fine for the MLP: the toy is refused, not the request
    Spec.from_config(compose_config([*BASE[1:], *overrides]))


def test_the_messages_name_whoever_supports_the_capability(toy, monkeypatch):
    monkeypatch.setattr(Toy, "capabilities", frozenset({JACOBIAN}))
    with pytest.raises(ConfigError,
                       match="for arch=mlp, arch=conv, arch=resmlp, arch=toy only; for arch=resconv"):
        Spec.from_config(compose_config(["arch=resconv", "jacobian=1", "batch=2"]))


def test_everything_comes_from_the_toy_entry(toy):
    spec = Spec.from_config(compose_config(BASE))
    assert spec.architecture is toy
    assert spec.weight_shapes == [(4, 4, 2)] * 3 and spec.spatial == ()
    assert spec.quantities == ("forward",)
    m = measure(spec, progress=False)
    assert toy.calls == 1 and set(m.values) == {"forward"} and not m.positions
    np.testing.assert_array_equal(m.values["forward"], MARK)
    np.testing.assert_array_equal(predict(spec)["forward"], MARK)
    net = reference.member(spec)
    assert [type(m) for m in reference.layers(net)] == [nn.Bilinear] * 3


def test_annotations_read_na_with_the_reason(toy):
    spec = Spec.from_config(compose_config(BASE))
    crit = criticality.for_spec(spec)
    assert crit.phase == "n/a"
    assert crit.note == "defined for MLPs, conv stacks (arch=mlp, arch=conv) only"
    assert finite_width.undefined_reason(spec) == "defined for MLPs (arch=mlp) only"
    for capability in CAPABILITIES:
        assert archs.why_not(spec, capability).startswith("defined for ")


def test_a_toy_run_end_to_end_writes_only_its_own_outputs(toy, tmp_path):
    res = execute(compose_config([*BASE, "plot=false", "progress=false"]), tmp_path, echo=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "metadata.json",
                                                          "metrics.parquet"]
    assert set(res.frame["quantity"]) == {"forward"}
    assert (res.frame["value"] == MARK).all() and (res.frame["theory"] == MARK).all()


def test_the_base_refuses_capabilities_it_was_not_given(toy):
    spec = Spec.from_config(compose_config(BASE))
    with pytest.raises(NotImplementedError, match="arch=toy does not support jacobian"):
        toy.jacobian(spec, [], None, torch.empty(0))
    with pytest.raises(NotImplementedError, match="arch=toy does not support positions"):
        toy.position_maps(spec)
