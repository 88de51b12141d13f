"""The `scheme` config group matches the scheme registry (harness.core.schemes).

- every registered name (aliases included) has a YAML in conf/scheme/ and every YAML is a
  registered name: the file names are the CLI's choices;
- each YAML lists exactly the scheme's declared parameters, with the registry's defaults (so a
  key Hydra accepts is one the scheme takes, and every parameter it takes can be overridden
  without a `+`);
- a key a scheme does not take is a one-line error either way: Hydra's (no such key in its
  YAML) or the scheme's own (`+scheme.KEY=...`);
- every entry documents its Var(W) (its class docstring and its `doc`).
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from harness.cli import CONF_DIR
from harness.core import schemes
from tests.conftest import expect_one_line_error

SCHEME_DIR = CONF_DIR / "scheme"
YAMLS = sorted(p.stem for p in SCHEME_DIR.glob("*.yaml"))


def test_every_scheme_has_a_yaml_and_every_yaml_a_scheme():
    assert set(YAMLS) == set(schemes.NAMES)


@pytest.mark.parametrize("name", YAMLS)
def test_yaml_lists_exactly_the_declared_parameters_and_defaults(name):
    cfg = OmegaConf.to_container(OmegaConf.load(SCHEME_DIR / f"{name}.yaml"))
    assert cfg.pop("name") == name
    declared = dict(schemes.scheme(name).parameters)
    assert list(cfg) == list(declared), f"{name}.yaml lists {list(cfg)}; the scheme takes {list(declared)}"
    # the same literal on both sides parses to the same value, so exact equality is right
    assert cfg == declared


@pytest.mark.parametrize(("args", "message"), [
    (["scheme=xavier", "scheme.nonlinearity=relu"],
     "unknown config key 'scheme.nonlinearity'; keys under scheme: name, gain"),
    (["scheme=xavier_uniform", "scheme.a=0.1"],
     "unknown config key 'scheme.a'; keys under scheme: name, gain"),
    (["scheme=torch_default", "scheme.gain=2"],
     "unknown config key 'scheme.gain'; keys under scheme: name"),
    (["scheme=torch_default", "+scheme.gain=2"], "scheme torch_default takes no gain (its parameters: none)"),
    (["scheme=orthogonal", "+scheme.a=0.1"], "scheme orthogonal takes no a (its parameters: gain)"),
    (["scheme=lecun_normal", "+scheme.nonlinearity=relu"], "scheme lecun_normal takes no nonlinearity"),
])
def test_a_key_the_scheme_does_not_take_is_one_line(args, message, capsys):
    expect_one_line_error(args, message, capsys)


@pytest.mark.parametrize("name", list(schemes.SCHEMES))
def test_every_entry_documents_its_variance(name):
    entry = schemes.SCHEMES[name]
    assert "Var(W)" in type(entry).__doc__ and "Var(W)" in entry.doc, name
