"""The probe's command-line checks: compose its config and refuse bad input in one line.

The probe's Hydra config lives in `harness/probe/conf` (`probe.yaml`, the `model` presets and
scheme=native); the harness's `scheme` and `launcher` groups come from `harness/conf` through the
search path. As for `harness.run` (`harness.cli`), every override is checked before Hydra runs:
group choices, keys, values (`ProbeSpec.from_config`) and the model's factory (importable, its
optional library installed): a bad one costs one line on stderr, exit code 2 and no files.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness import cli
from harness.core.validate import ConfigError
from harness.probe import models
from harness.probe.spec import NATIVE, NOT_APPLICABLE, ProbeSpec

CONF_DIR = Path(__file__).resolve().parent / "conf"
CONFIG = "probe"
COMMAND = "python -m harness.probe"


def groups() -> dict[str, list[str]]:
    """Config group -> its options: model (conf/model), scheme (native and the harness's),
    launcher (the harness's)."""
    theirs = cli.groups()
    return {"model": sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")),
            "scheme": sorted([NATIVE, *theirs["scheme"]]),
            "launcher": theirs["launcher"]}


def compose_config(overrides: Sequence[str] = (), *, hydra: bool = False) -> DictConfig:
    """The probe's config Hydra would compose for `overrides` (no folder is created); `hydra`:
    with the hydra node (its run directory)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="probe"):
        return compose(CONFIG, overrides=list(overrides), return_hydra_config=hydra)


def check_overrides(overrides: Sequence[str], *, multirun: bool, target: str | None = None) -> DictConfig:
    """Validate the overrides; returns the composed config (each swept key at its first value).
    ConfigError (one line) for: a key of harness.run that does not apply (act, depth, width), an
    unknown group choice or key, a sweep without --multirun, a bad value, a model whose factory
    cannot be imported (a missing extra is named) — every swept model is checked. `target`: the
    dotted name of a factory object given to `harness.probe` (then model._target_ is not needed)."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise ConfigError(cli._one_line(str(e))) from None
    options = groups()
    first, models_chosen = [], []
    for o in parsed:
        key = o.key_or_group.lstrip("+~")
        top = key.split(".")[0]
        if top in NOT_APPLICABLE:
            raise ConfigError(f"{top} does not apply to harness.probe: the probed model fixes its "
                              f"layers, widths and activations (got {o.input_line}); drop it")
        values = cli._values(o) or []
        if key in options and not o.is_delete():
            for v in values:
                if v not in options[key]:
                    raise ConfigError(f"unknown {key} {v!r}; allowed: {', '.join(options[key])} "
                                      f"(or model._target_=package.module.Factory)" if key == "model"
                                      else f"unknown {key} {v!r}; allowed: {', '.join(options[key])}")
        if key == "model":
            models_chosen += values
        if key == cli.LAUNCHER and not o.is_delete():
            cli._check_launcher(values)
        text = o.input_line or ""
        if o.is_sweep_override() and values:
            text = f"{o.get_key_element()}={values[0]}"
        first.append(text)
    sweeps = [o for o in parsed if o.is_sweep_override()]
    if sweeps and not multirun:
        o = sweeps[0]
        raise ConfigError(f"{o.input_line!r} sweeps {o.key_or_group} over several values: add "
                          f"--multirun to run each, or write {o.key_or_group}=[a,b] for a list")
    cfg = _compose(first)
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(cli._one_line(str(e))) from None
    cli.wants_plot(cfg.get("plot", "auto"), multirun=multirun)
    spec = ProbeSpec.from_config(cfg, target=target)
    if target is None:
        models.resolve(spec.target, f"model {spec.model}")
    for name in dict.fromkeys(models_chosen[1:]):  # the other swept presets
        node = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
        target = OmegaConf.select(node, "model._target_")
        if target:
            models.resolve(str(target), f"model {name}")
    return cfg


def _compose(overrides: list[str]) -> DictConfig:
    try:
        return compose_config(overrides)
    except (HydraException, OmegaConfBaseException) as e:
        m = re.search(r"Could not override '([^']+)'", str(e))
        if m is None:
            raise ConfigError(cli._one_line(str(e))) from None
        key = m.group(1)
        if key.startswith("model."):
            raise ConfigError(f"unknown config key {key!r}: to pass an argument to the model's factory "
                              f"write +{key}=VALUE") from None
        if key.startswith("scheme."):
            raise ConfigError(f"unknown config key {key!r}: the chosen scheme takes no such parameter "
                              f"(scheme={NATIVE} takes none)") from None
        known = ", ".join(map(str, compose_config([]).keys()))
        raise ConfigError(f"unknown config key {key!r}; keys: {known}") from None


def run_dir(overrides: Sequence[str]) -> Path:
    """The run directory Hydra's `hydra.run.dir` names for these overrides (not created)."""
    cfg = compose_config(list(overrides), hydra=True)
    return Path(str(cfg.hydra.run.dir))
