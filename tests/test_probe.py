"""harness.probe: per-module statistics of any nn.Module (docs/probe.md).

The batched (vmap) and loop paths agree; the statistics match their definitions and, for an
nn.Module equal to arch=mlp, harness.run's measured values within standard errors; a harness
scheme re-draws Linear/Conv weights with torch's semantics; every bad input is one line, exit 2,
no files; the outputs load and report like harness.run's.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import harness
from harness.core.validate import ConfigError
from harness.outputs import compare
from harness.probe import engine, models
from harness.probe.spec import ProbeSpec
from harness.sim import reference

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


class Block(nn.Module):
    """A residual conv block with BatchNorm (trained mode: batch statistics)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn(self.conv(x)))


class TinyResNet(nn.Module):
    """stem conv + BN, two residual blocks named like torchvision's (layer1.0, layer1.1), a head."""

    def __init__(self, c: int = 4, classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(2, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.layer1 = nn.Sequential(Block(c), Block(c))
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer1(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(h.mean((2, 3)))


class Branchy(nn.Module):
    """Data-dependent control flow: vmap cannot trace it, the loop can."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return h if h.sum() > 0 else -h


class Tokens(nn.Module):
    """A tiny language model returning a dict, as Hugging Face models do."""

    def __init__(self, vocab: int = 11, d: int = 6):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.norm(self.emb(ids))
        return {"last_hidden_state": h, "logits": self.head(h)}


def spec_of(**cfg) -> ProbeSpec:
    base = dict(model={"_target_": "x.y"}, scheme={"name": "native"}, input_shape=[2, 6, 6],
                batch=3, replicates=3, dtype="float64")
    return ProbeSpec.from_config({**base, **cfg})


# ---- the two paths ---------------------------------------------------------------------------
@pytest.mark.parametrize("train", [True, False])
def test_vmap_and_loop_give_the_same_numbers(train):
    """Same seed, same numbers on both paths (float64: round-off only), BatchNorm in training
    mode included; the replicates differ from each other (independent networks)."""
    spec = spec_of(train=train)
    a = engine.measure(TinyResNet, spec, path="vmap")
    b = engine.measure(TinyResNet, spec, path="loop")
    assert a.info["path"] == "vmap" and b.info["path"] == "loop"
    assert [p.key for p in a.points] == [p.key for p in b.points]
    np.testing.assert_allclose(a.values, b.values, rtol=1e-9, atol=1e-12)
    assert not np.allclose(a.values[0], a.values[1])


def test_default_selection_and_execution_order():
    """Leaves with parameters plus the residual blocks, in the order the calls return."""
    m = engine.measure(TinyResNet, spec_of(), path="loop")
    assert [p.key for p in m.points] == [
        "conv1", "bn1", "layer1.0.conv", "layer1.0.bn", "layer1.0", "layer1.1.conv", "layer1.1.bn",
        "layer1.1", "fc"]
    assert [p.module_type for p in m.points][4] == "Block"
    assert [p.channel_dim for p in m.points] == [1] * 8 + [1]


def test_statistics_match_their_definitions():
    """forward, mean, the channel statistics and param_norm from the module's own output and
    parameters, recomputed by plain autograd on replicate 0 (the same weights and inputs)."""
    spec = spec_of(modules=["layer1.0", "fc"], train=True)
    m = engine.measure(TinyResNet, spec, path="vmap")
    net = models.build(TinyResNet, {}, spec.seed, 0, "t").double()
    torch.func.replace_all_batch_norm_modules_(net)
    x = engine.inputs(spec, None)[0]
    outs = {}
    def keep(name):
        def hook(mod, args, y):
            y.retain_grad()
            outs[name] = y
        return hook

    for name in ("layer1.0", "fc"):
        net.get_submodule(name).register_forward_hook(keep(name))
    out = net(x)
    cot = torch.empty_like(out).normal_(generator=models.generator(spec.seed, 0, models.COTANGENT, "cpu"))
    (out * cot).sum().backward()
    y = outs["layer1.0"]
    mc, vc = y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=False)
    block = net.get_submodule("layer1.0")
    expect = [y.square().mean(), y.mean(), mc.square().mean(), vc.mean(), y.grad.square().mean(),
              sum(p.grad.square().sum() for p in block.parameters())
              / (sum(p.numel() for p in block.parameters()) * spec.batch),
              torch.sqrt(sum(p.square().sum() for p in block.parameters()))]
    np.testing.assert_allclose(m.values[0, 0], [float(e.detach()) for e in expect], rtol=1e-9)
    # forward = channel_mean_sq + channel_var exactly (E y² = mean² + var per channel)
    assert m.values[0, 0, 0] == pytest.approx(m.values[0, 0, 2] + m.values[0, 0, 3], rel=1e-12)


def test_a_model_vmap_cannot_trace_falls_back_to_the_loop():
    spec = spec_of(input_shape=[4], vmap="auto")
    m = engine.measure(Branchy, spec)
    assert m.info["path"] == "loop" and "vmap_error" in m.info
    loop = engine.measure(Branchy, spec, path="loop")
    np.testing.assert_array_equal(m.values, loop.values)
    with pytest.raises(ConfigError, match="cannot be vmapped"):
        engine.measure(Branchy, spec_of(input_shape=[4], vmap="true"))


def test_tokens_dict_output_and_output_key():
    """input=tokens draws ids below the model's vocabulary (its nn.Embedding); the cotangent
    goes on the chosen output; a key the model does not return is a one-line error."""
    spec = spec_of(input_shape=[5], input="tokens")
    x = engine.inputs(spec, 11)
    assert x.dtype == torch.int64 and int(x.min()) >= 0 and int(x.max()) < 11
    hidden = engine.measure(Tokens, spec)
    logits = engine.measure(Tokens, spec_of(input_shape=[5], input="tokens", output="logits"))
    assert hidden.info["output"] == "last_hidden_state" and logits.info["output_shape"] == [3, 5, 11]
    assert [p.key for p in hidden.points] == ["emb", "norm", "head"]
    # the head's output gradient is the cotangent itself only when the cotangent sits on logits
    assert logits.values[:, 2, 4] == pytest.approx(1.0, abs=0.35)
    assert np.all(hidden.values[:, 2, 4] == 0)  # head does not reach last_hidden_state
    with pytest.raises(ConfigError, match="its tensors: last_hidden_state, logits"):
        engine.measure(Tokens, spec_of(input_shape=[5], input="tokens", output="logit"))


# ---- schemes -------------------------------------------------------------------------------------
def test_harness_scheme_redraws_linear_and_conv_with_torch_semantics():
    """kaiming with torch's defaults (leaky_relu, a = 0): Var(W) = 2/fan_in per replicate, with
    fans as torch computes them (Conv2d: in·k²); biases zero; norm layers γ = 1, β = 0. The
    sample variance of n entries has relative s.e. ≈ √(2/n): checked within 5 s.e."""
    net = TinyResNet(c=16)
    g = torch.Generator().manual_seed(0)
    kw = dict(mode="fan_in", nonlinearity="leaky_relu", a=0.0, gain=math.sqrt(2.0))
    n = models.reinitialize(net, "kaiming_normal", kw, 0.0, g)
    assert n == 4
    w = net.layer1[0].conv.weight.detach()
    fan_in = 16 * 9
    assert float(w.var()) == pytest.approx(2.0 / fan_in, rel=5 * math.sqrt(2 / w.numel()))
    assert float(net.conv1.bias.detach().abs().max()) == 0.0
    assert torch.equal(net.bn1.weight, torch.ones(16)) and torch.equal(net.bn1.bias, torch.zeros(16))


def test_numeric_module_names_are_patterns():
    """Hydra reads modules=[0,1] as ints: they name an nn.Sequential's children."""
    assert spec_of(modules=[0, "fc", 12]).modules == ("0", "fc", "12")
    with pytest.raises(ConfigError, match="non-empty list of fnmatch patterns"):
        spec_of(modules=[True])


def test_scheme_resolution_follows_nonlinearity():
    assert spec_of(scheme={"name": "kaiming"}).gain == pytest.approx(math.sqrt(2.0))
    assert spec_of(scheme={"name": "kaiming"}, nonlinearity="tanh").gain == pytest.approx(5 / 3)
    assert spec_of(scheme={"name": "xavier"}).gain == 1.0
    assert spec_of().gain is None and spec_of().native


# ---- cross-check with harness.run ------------------------------------------------------------------
def mlp(width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(width, width, bias=False))
        if i < depth - 1:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def _z(run: pd.DataFrame, probe: pd.DataFrame, pairs: list[tuple[str, int, str, str]]) -> np.ndarray:
    """|run mean − probe mean| / √(s.e.² + s.e.²) over replicates, one per pair (run quantity,
    run layer, probe quantity, probe module): independent seeds, so the two means' errors add."""
    z = []
    for q, layer, pq, module in pairs:
        a = run[(run["quantity"] == q) & (run["layer"] == layer)]["value"]
        b = probe[(probe["quantity"] == pq) & (probe["module"] == module)]["value"]
        assert len(a) == len(b) > 1, (q, layer, pq, module)
        z.append(abs(a.mean() - b.mean()) / math.sqrt(a.sem() ** 2 + b.sem() ** 2))
    return np.array(z)


def _bonferroni(points: int, alpha: float = 0.001) -> float:
    """The two-sided normal quantile that keeps the family-wise error of `points` tests at alpha."""
    return NormalDist().inv_cdf(1 - alpha / (2 * points))


def _agreement(scheme: str) -> np.ndarray:
    """z per (quantity, layer) for an nn.Sequential equal to arch=mlp (tanh, kaiming, width 32,
    depth 4) against harness.run's measured values; the probe's points are its 4 Linear layers."""
    width, depth, R = 32, 4, 48
    run = harness.run("arch=mlp", "act=tanh", "scheme=kaiming", depth=depth, width=width, batch=8,
                      replicates=R, seed=1, plot=False).frame
    p = harness.probe(lambda: mlp(width, depth), f"scheme={scheme}", nonlinearity="tanh",
                      input_shape=[width], batch=8, replicates=R, seed=2, plot=False).frame
    return _z(run, p, [(q, l, q, str(2 * (l - 1))) for q in ("forward", "backward", "weight_grad")
                       for l in range(1, depth + 1)])


def test_probe_of_an_mlp_agrees_with_harness_run():
    """12 points (3 quantities × 4 layers), independent seeds: every |difference| within
    Bonferroni's k at family-wise α = 0.001 (k ≈ 3.9) standard errors of the difference. The
    check can fail: the same probe under xavier (gain 1 instead of 5/3) departs at some point."""
    k = _bonferroni(12)
    assert _agreement("kaiming").max() < k
    assert _agreement("xavier").max() > k


def _resmlp_agreement(scheme: str) -> np.ndarray:
    """z per (quantity, block) for the plain torch network equal to arch=resmlp (relu, kaiming,
    width 32, 4 blocks x + W relu(x), `harness.sim.reference.member`: nn.Sequential of
    ResidualBlock) against harness.run's measured values. Per block l the probe's points are the
    block's output (the stream x^l: forward, backward = mean (∂loss/∂x^l)²) and its Linear (its
    output is the branch f_l = W relu(x^{l-1}); its weight gradient)."""
    width, depth, R = 32, 4, 32
    res = harness.run("arch=resmlp", "act=relu", "scheme=kaiming", depth=depth, width=width, batch=8,
                      replicates=R, seed=1, plot=False)
    blocks = [str(l) for l in range(depth)]
    p = harness.probe(lambda: reference.member(res.spec), f"scheme={scheme}", nonlinearity="relu",
                      input_shape=[width], batch=8, replicates=R, seed=2, plot=False,
                      modules=[*blocks, "*.layers.0"]).frame
    pairs = []
    for l, b in enumerate(blocks, 1):
        pairs += [("forward", l, "forward", b), ("backward", l, "backward", b),
                  ("branch", l, "forward", f"{b}.layers.0"),
                  ("weight_grad", l, "weight_grad", f"{b}.layers.0")]
    return _z(res.frame, p, pairs)


def test_probe_of_a_resmlp_agrees_with_harness_run():
    """16 points (stream forward and backward, branch, weight_grad × 4 blocks) within Bonferroni's
    k (family-wise α = 0.001, k ≈ 4.0) standard errors of the difference; under xavier (gain 1: the
    branch adds q/2 instead of q per block) the probe departs."""
    k = _bonferroni(16)
    assert _resmlp_agreement("kaiming").max() < k
    assert _resmlp_agreement("xavier").max() > k


# ---- selection errors ---------------------------------------------------------------------------
def test_pattern_matching_nothing_lists_close_names():
    with pytest.raises(ConfigError, match=r"'layer1\.0\.cnv' matches no module.*close names: layer1\.0\.conv"
                       ):
        engine.measure(TinyResNet, spec_of(modules=["layer1.0.cnv"]))
    with pytest.raises(ConfigError, match="close names: Conv2d"):
        engine.measure(TinyResNet, spec_of(module_types=["Conv2"]))
    m = engine.measure(TinyResNet, spec_of(module_types=["Conv2d"]))
    assert {p.module_type for p in m.points} == {"Conv2d"}


def test_bad_values_are_one_line_errors():
    for cfg, msg in [(dict(act={"name": "relu"}), "act does not apply"),
                     (dict(depth=3), "depth does not apply"),
                     (dict(input_shape=[0]), "input_shape must be"),
                     (dict(scheme={"name": "native", "gain": 2}), "takes no parameters"),
                     (dict(scheme={"name": "lsuv"}), "lsuv"),
                     (dict(vmap="maybe"), "unknown vmap"),
                     (dict(vocab=3), "vocab applies to input=tokens")]:
        with pytest.raises(ConfigError, match=msg) as e:
            spec_of(**cfg)
        assert "\n" not in str(e.value)


# ---- the command line ----------------------------------------------------------------------------
LINEAR = ["model._target_=torch.nn.Linear", "+model.in_features=6", "+model.out_features=3",
          "input_shape=[6]", "batch=4", "replicates=3", "progress=false"]


@pytest.mark.parametrize("args, message", [
    (["model=resnet19"], "unknown model 'resnet19'; allowed: gpt2_small, resnet18"),
    ([*LINEAR, "act=relu"], "act does not apply"),
    ([*LINEAR, "width=3"], "width does not apply"),
    (["model._target_=torch.nn.Linear", "+model.in_features=-1", "+model.out_features=3",
      "input_shape=[6]"], "the factory raised RuntimeError"),
    ([*LINEAR[:3], "input_shape=[5]", "batch=2"], "does not take inputs of shape [2, 5]"),
    ([*LINEAR, "modules=[wieght]"], "matches no module"),
    (["model._target_=nosuchpackage.Net", "input_shape=[3]"], "cannot import nosuchpackage"),
    (["model=resnet18", "model.num_classes=3"], "write +model.num_classes=VALUE"),
])
def test_cli_bad_input_is_one_line_exit_2_no_files(run_cli, tmp_path, args, message):
    r = run_cli(*args, module="harness.probe")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_extra_names_it(run_cli, tmp_path, monkeypatch):
    """A preset whose library is not installed: one line naming the extra, exit 2, no files."""
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    r = run_cli("model=resnet18", module="harness.probe")
    assert r.returncode == 2
    assert "needs torchvision" in r.stderr and "pip install -e '.[models]'" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_run_writes_the_contract_and_loads(run_cli, tmp_path):
    r = run_cli(*LINEAR, "hydra.run.dir=out", module="harness.probe")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"config.yaml", "metadata.json", "metrics.parquet",
                                               "modules.png"}
    df = harness.load(out)
    assert {"module", "module_type", "layer", "replicate", "quantity", "value", "theory"} <= set(df)
    assert set(df["quantity"]) == set(engine.QUANTITIES) and df["theory"].isna().all()
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["probe"]["path"] == "vmap" and meta["reproduce"].startswith("python -m harness.probe")
    table = compare.agreement(df)
    assert list(table["class"]) == [compare.NO_THEORY]


def test_probe_sweep_reports(run_cli, tmp_path):
    """A --multirun probe sweep: one folder per job, resumable; harness.report builds on it."""
    r = run_cli("--multirun", *LINEAR, "scheme=native,kaiming", "hydra.sweep.dir=sw",
                module="harness.probe")
    assert r.returncode == 0, r.stderr
    df = harness.load(tmp_path / "sw")
    assert set(df["scheme"]) == {"native", "kaiming"}
    assert compare.swept_keys(df) == ["scheme"]
    rep = run_cli(str(tmp_path / "sw"), module="harness.report")
    assert rep.returncode == 0, rep.stderr
    html = (tmp_path / "sw" / "report" / "report.html").read_text()
    assert "no theory" in html
    again = run_cli("--multirun", *LINEAR, "scheme=native,kaiming", "hydra.sweep.dir=sw",
                    module="harness.probe")
    assert again.returncode == 0 and "2 skipped" in again.stdout


def test_api_returns_a_result_like_harness_run(tmp_path):
    r = harness.probe(TinyResNet, input_shape=[2, 6, 6], batch=2, replicates=2)
    assert isinstance(r, harness.Result)
    assert r.verdict()[-1].startswith("9 points in execution order")
    fig = r.plot()
    assert len(fig.axes) >= 5
    r.save(tmp_path / "api")
    assert pd.read_parquet(tmp_path / "api" / "metrics.parquet").equals(r.frame)
    with pytest.raises(ConfigError, match="act does not apply"):
        harness.probe(TinyResNet, "act=relu", input_shape=[2, 6, 6])


# ---- a real preset at reduced size ---------------------------------------------------------------
@pytest.mark.skipif(not HAS_TORCHVISION, reason="needs the models extra (torchvision)")
def test_resnet18_preset_reduced(run_cli, tmp_path):
    """resnet18 at 32×32, batch 2, 2 replicates: blocks layer1.0..layer4.1 among the points; the
    torchvision compatibility shim (docs/probe.md) is recorded when it was needed."""
    r = run_cli("model=resnet18", "input_shape=[3,32,32]", "batch=2", "replicates=2",
                "progress=false", "plot=false", "hydra.run.dir=rn", module="harness.probe")
    assert r.returncode == 0, r.stderr
    df = harness.load(tmp_path / "rn")
    names = list(df.drop_duplicates("layer")["module"])
    assert names[:2] == ["conv1", "bn1"] and names[-1] == "fc"
    assert [n for n in names if n.count(".") == 1] == [f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)]
    meta = json.loads((tmp_path / "rn" / "metadata.json").read_text())
    assert meta["probe"]["path"] == "vmap"
    try:
        torch.ops.torchvision.nms  # noqa: B018 - does the C extension's operator exist?
        extension = True
    except (AttributeError, RuntimeError):
        extension = False
    assert ("shims" in meta["probe"]) == (not extension)


# ---- the torchvision compatibility shim -----------------------------------------------------------
FAKE_INIT = "from torchvision import _meta_registrations\nfrom torchvision import models\n"
FAKE_MODELS = "import torch\n\n\ndef resnet18():\n    return torch.nn.Linear(2, 2)\n"


@pytest.fixture
def fake_torchvision(tmp_path, monkeypatch):
    """A stand-in torchvision package on sys.path whose _meta_registrations raises `error`, as the
    CUDA-built extension's does on a CPU-only torch; this process's torchvision modules are put
    back afterwards."""
    saved = {k: v for k, v in sys.modules.items() if k == "torchvision" or k.startswith("torchvision.")}

    def make(error: str) -> None:
        pkg = tmp_path / "torchvision"
        pkg.mkdir(exist_ok=True)
        (pkg / "__init__.py").write_text(FAKE_INIT)
        (pkg / "_meta_registrations.py").write_text(f"raise RuntimeError({error!r})\n")
        (pkg / "models.py").write_text(FAKE_MODELS)
        for k in saved:
            sys.modules.pop(k, None)
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setattr(models, "SHIMS", {})

    yield make
    for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def test_torchvision_shim_applies_only_to_the_missing_operator(fake_torchvision):
    """The import fails as the CUDA-built extension's does: the shim stands in for
    _meta_registrations, the models import, and SHIMS records why."""
    fake_torchvision("operator torchvision::nms does not exist")
    mod = models.import_optional("torchvision.models", "model resnet18")
    assert isinstance(mod.resnet18(), nn.Linear)
    assert "torchvision::nms" in models.SHIMS["torchvision._meta_registrations"]


def test_torchvision_other_import_errors_are_not_hidden(fake_torchvision):
    fake_torchvision("something else broke")
    with pytest.raises(ConfigError, match="importing torchvision.models failed: RuntimeError: something"):
        models.import_optional("torchvision.models", "model resnet18")
    assert models.SHIMS == {}


def test_probe_and_run_side_by_side(tmp_path):
    """A folder holding a harness.run result and a probe of the same MLP loads as one frame; the
    report's agreement table classes the run against its theory and the probe as no theory."""
    harness.run("act=tanh", depth=3, width=8, batch=4, replicates=3, plot=False).save(tmp_path / "run")
    harness.probe(lambda: mlp(8, 3), "scheme=kaiming", nonlinearity="tanh", input_shape=[8], batch=4,
                  replicates=3, plot=False).save(tmp_path / "probe")
    df = harness.load(tmp_path)
    assert df.groupby("run_dir")["module"].apply(lambda m: m.notna().any()).sum() == 1
    table = compare.agreement(df)
    assert compare.NO_THEORY in set(table["class"]) and len(table) == 2
    assert (table["class"] != compare.NO_THEORY).sum() == 1
