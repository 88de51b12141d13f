"""Command-line checks shared by the entry points: validate overrides before Hydra runs.

Hydra creates the run directory and writes `.hydra/` before the task function starts, and
reports composition errors over several lines. So the overrides are checked here first: group
choices against the files in `conf/`, keys against the composed config, and (for a single run)
every value through `Spec.from_config`. A bad input then costs one line on stderr, exit code 2,
and no files.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.cli import experiments, launchers
from harness.core.spec import ConfigError, Spec
from harness.outputs import results

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
LAUNCHER = "launcher"  #: the config group choosing the --multirun launcher (conf/launcher/)
experiments.register()  # experiment=NAME -> experiments/NAME.yaml, from any working directory

#: flags after which Hydra prints something and runs nothing: leave them to Hydra
INFO_FLAGS = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i",
              "--shell-completion", "-sc"}
MULTIRUN_FLAGS = {"--multirun", "-m"}
#: flags that take the next argument as their value
VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--config-path", "-cp",
               "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(flags, overrides) of a Hydra command line."""
    flags, overrides = [], []
    it = iter(argv)
    for a in it:
        if a.startswith("-") and not a.startswith(("+", "~")):
            flags.append(a)
            if a in VALUE_FLAGS and a not in ("--info", "-i", "--cfg", "-c"):
                flags.append(next(it, ""))
        else:
            overrides.append(a)
    return flags, overrides


def groups() -> dict[str, list[str]]:
    """Config group -> its options (the YAML files in conf/<group>/, and experiments/)."""
    out = {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(CONF_DIR.iterdir())
        if d.is_dir()
    }
    out[experiments.GROUP] = experiments.names()
    return out


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The job config Hydra would compose for `overrides` (no run directory is created)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="harness"):
        return compose("config", overrides=list(overrides))


def _values(override) -> list[str] | None:
    if not override.is_sweep_override():
        return [str(override.value())]
    try:
        return list(override.sweep_string_iterator())
    except HydraException:  # glob(...) needs the config loader: leave it to Hydra
        return None


def check_overrides(overrides: Sequence[str], *, multirun: bool) -> DictConfig:
    """Validate overrides; returns the composed config (first sweep value of each key).

    Raises ConfigError with a one-line message.
    """
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise ConfigError(_one_line(str(e))) from None
    options = groups()
    first: list[str] = []
    for o in parsed:
        key = o.key_or_group
        values = _values(o)
        if key in options and not o.is_delete():
            for v in values or []:
                if v not in options[key]:
                    raise ConfigError(f"unknown {key} {v!r}; allowed: {', '.join(options[key])}")
        if key == LAUNCHER and not o.is_delete():
            _check_launcher(values or [])
        text = o.input_line or ""
        if o.is_sweep_override() and values:
            text = f"{o.get_key_element()}={values[0]}"
        first.append(text)
    try:
        cfg = compose_config(first)
    except (HydraException, OmegaConfBaseException) as e:
        m = re.search(r"Could not override '([^']+)'", str(e))
        if m:
            key = m.group(1)
            parent, _, _ = key.rpartition(".")
            node = compose_config([o for o in first if not o.startswith(key)])
            node = OmegaConf.select(node, parent) if parent else node
            where = f" under {parent}" if parent else ""
            known = ", ".join(node.keys()) if isinstance(node, DictConfig) else "none"
            raise ConfigError(
                f"unknown config key {key!r}; keys{where}: {known} (prefix + to add a new key)"
            ) from None
        raise ConfigError(_one_line(str(e))) from None
    if not multirun:
        results.check_frame(Spec.from_config(cfg))  # and its results fit the machine's memory
    return cfg


def _check_launcher(values: Sequence[str]) -> None:
    """One launcher per sweep, and its plugin installed (else Hydra fails over many lines)."""
    if len(values) != 1:
        raise ConfigError(f"launcher cannot be swept (got {', '.join(values)}); choose one: "
                          f"{', '.join(groups()[LAUNCHER])}")
    message = launchers.missing_plugin(values[0], CONF_DIR / LAUNCHER / f"{values[0]}.yaml")
    if message:
        raise ConfigError(message)


def _one_line(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    lines = [ln for ln in lines if "HYDRA_FULL_ERROR" not in ln]
    return "; ".join(lines[:3])


def precheck(argv: Sequence[str]) -> None:
    """Exit 2 with one line on stderr if the command line is bad; return if it is fine."""
    flags, overrides = split_argv(argv)
    if INFO_FLAGS & set(flags):
        return
    try:
        check_overrides(overrides, multirun=bool(MULTIRUN_FLAGS & set(flags)))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def resolved_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the harness's convention for the plain (non-Hydra) entry points: a bad
    command line is one line on stderr, `error: WHAT; usage: ...`, and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        print(f"error: {message}; usage: {usage}", file=sys.stderr)
        raise SystemExit(2)
