"""Command-line checks shared by the entry points: validate overrides before Hydra runs.

Hydra creates the run directory and writes `.hydra/` before the task function starts, and
reports composition errors over several lines. So the overrides are checked here first: group
choices against the files in `conf/`, keys against the composed config, and (for a single run)
every value through `Spec.from_config`. A bad input then costs one line on stderr, exit code 2,
and no files.
"""

from __future__ import annotations

import argparse
import functools
import os
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
from harness.sim import memory

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
        if d.is_dir() and not d.name.startswith(("_", "."))  # not __pycache__ (conf/ is a package)
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
    first: list[tuple[str, str]] = []  # (key, the override with its first sweep value)
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
        first.append((key, text))
    chosen = [t.split("=", 1)[1] for k, t in first if k == experiments.GROUP and "=" in t]
    experiment = chosen[-1] if chosen else None
    sweeps = [o for o in parsed if o.is_sweep_override()]
    if sweeps and not (multirun or _runs_multirun(experiment, first)):  # else Hydra's many lines
        o = sweeps[0]
        raise ConfigError(f"{o.input_line!r} sweeps {o.key_or_group} over several values: add "
                          f"--multirun to run each, write {o.key_or_group}=[a,b] for a list, or "
                          f"quote a string with commas ({o.key_or_group}='a,b')")
    try:
        cfg = compose_config([t for _, t in first])
    except (HydraException, OmegaConfBaseException) as e:
        key = _unknown_key(e)
        if key is None:
            raise ConfigError(_one_line(str(e))) from None
        node = _compose_dropping([(k, t) for k, t in first if k != key])
        parts = key.split(".")
        parent: list[str] = []  # the deepest node on the key's path that exists
        while node is not None and len(parent) < len(parts) - 1:
            child = OmegaConf.select(node, parts[len(parent)], default=None)
            if not isinstance(child, DictConfig):
                break
            node, parent = child, [*parent, parts[len(parent)]]
        key = ".".join(parts[: len(parent) + 1])
        where = f" under {'.'.join(parent)}" if parent else ""
        known = ", ".join(map(str, node.keys())) if isinstance(node, DictConfig) else "none"
        raise ConfigError(f"unknown config key {key!r}; keys{where}: {known}") from None
    _check_keys(cfg, experiment)
    try:  # an interpolation ${...} to a key that is not there
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(_one_line(str(e))) from None
    wants_plot(cfg.get("plot", "auto"), multirun=multirun)
    if not multirun:
        spec = Spec.from_config(cfg)
        memory.preflight(spec)  # one replicate fits the budget and the device
        results.check_frame(spec)  # and its results fit the machine's memory
    return cfg


def _unknown_key(error: Exception) -> str | None:
    """The key of Hydra's "Could not override 'KEY'" (a key the config does not have), else None."""
    m = re.search(r"Could not override '([^']+)'", str(error))
    return m.group(1) if m else None


def _compose_dropping(overrides: list[tuple[str, str]]) -> DictConfig | None:
    """The config composed from `overrides` less every key it does not have (several unknown
    keys fail one at a time); None if it fails for another reason."""
    rest = list(overrides)
    for _ in range(len(overrides) + 1):
        try:
            return compose_config([t for _, t in rest])
        except (HydraException, OmegaConfBaseException) as e:
            key = _unknown_key(e)
            if key is None:
                return None
            rest = [(k, t) for k, t in rest if k != key]
    return None


@functools.cache
def known_keys() -> tuple[str, ...]:
    """The top-level keys the harness reads: those of the default config (conf/config.yaml and
    its groups scheme, act)."""
    return tuple(map(str, compose_config([]).keys()))


def _runs_multirun(experiment: str | None, overrides: list[tuple[str, str]]) -> bool:
    """Whether Hydra runs this command line as a sweep without --multirun: `hydra.mode=MULTIRUN`
    on it, or set by the chosen experiment (phase_diagram, pennington2017)."""
    modes = [t.split("=", 1)[1] for k, t in overrides if k == "hydra.mode" and "=" in t]
    if modes:
        return modes[-1] == "MULTIRUN"
    path = experiments.EXPERIMENTS_DIR / f"{experiment}.yaml"
    return bool(experiment and path.is_file()
                and OmegaConf.select(OmegaConf.load(path), "hydra.mode", default=None) == "MULTIRUN")


@functools.cache
def _experiment_keys(name: str) -> tuple[str, ...]:
    """The top-level keys experiments/NAME.yaml defines (e.g. pennington2017's `critical`, the
    table its interpolations read)."""
    path = experiments.EXPERIMENTS_DIR / f"{name}.yaml"
    return tuple(map(str, OmegaConf.load(path).keys())) if path.is_file() else ()


@functools.cache
def primary_keys() -> frozenset[str]:
    """The top-level keys conf/config.yaml sets itself and the packages of its default groups
    (scheme, act, norm): a subset of `known_keys` read from one file, without composing."""
    primary = OmegaConf.load(CONF_DIR / "config.yaml")
    groups_ = {k for d in primary.get("defaults", []) if isinstance(d, DictConfig)
               for k, v in d.items() if v is not None and not str(k).startswith(("_", "hydra/"))}
    return frozenset(str(k) for k in primary if k not in ("defaults", "hydra")) | groups_


def _check_keys(cfg: DictConfig, experiment: str | None) -> None:
    """A key added with + that the harness does not read is refused (it would be ignored
    silently); the chosen experiment's own keys are known. Under scheme. and act. the registry
    entries refuse unknown keys. A config whose keys are all `primary_keys` passes without
    composing the default config (one Hydra composition less per command line)."""
    if set(map(str, cfg.keys())) <= primary_keys():
        return
    known = known_keys() + (_experiment_keys(experiment) if experiment else ())
    unknown = [str(k) for k in cfg.keys() if k not in known]
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}: the harness would ignore it; "
                          f"the keys it reads: {', '.join(known)}")


#: the values of the `plot` key
PLOT_VALUES = ("auto", "true", "false")


def wants_plot(value: object, *, multirun: bool) -> bool:
    """Whether a run writes its figures: plot=true always, false never, auto (the default) for
    a single run but not for a job of a --multirun sweep (`harness.report` draws the sweep).
    ConfigError for any other value."""
    if isinstance(value, bool):
        return value
    if value == "auto":
        return not multirun
    raise ConfigError(f"plot={value!r}; allowed: {', '.join(PLOT_VALUES)}")


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


def path_problem(path: str | os.PathLike[str]) -> str | None:
    """Why `path` cannot even be looked up (a NUL character, a name too long), else None."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        pass  # a path that is not there (yet) is fine here
    except (OSError, ValueError) as e:  # Path.exists() would say False to these
        return f"{os.fspath(path)!r} is not a usable path ({getattr(e, 'strerror', None) or e})"
    return None


def out_problem(path: str | os.PathLike[str], *, folder: bool) -> str | None:
    """Why `path` cannot be written as an output folder (`folder`) or file, else None: it
    exists as the other kind, or its nearest existing ancestor is a file or not writable."""
    p = Path(path)
    why = path_problem(p)
    if why:
        return why
    if not folder and p.name in ("", ".", ".."):
        return f"{p} must name a file"
    if p.exists():
        if folder != p.is_dir():
            return f"{p} exists and is {'not a folder' if folder else 'a folder; name a file'}"
    a = p if folder else p.parent
    while not a.exists() and a != a.parent:
        a = a.parent
    if not a.is_dir():
        return f"{p} cannot be created: {a} is a file, not a folder"
    if not os.access(a, os.W_OK):
        return f"{p} cannot be written: {a} is not writable"
    return None


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the harness's convention for the plain (non-Hydra) entry points: a bad
    command line is one line on stderr, `error: WHAT; usage: ...`, and exit code 2."""

    def check_path(self, path: str, flag: str = "PATH") -> Path:
        """`path` as a Path that exists; else a one-line error."""
        why = path_problem(path)
        if why:
            self.error(f"{flag}: {why}")
        if not Path(path).exists():
            self.error(f"no such file or directory: {path}")
        return Path(path)

    def check_out(self, path: str | os.PathLike[str], *, folder: bool, flag: str = "--out") -> Path:
        """`path` as a Path that can be written as an output folder or file; else a one-line
        error (checked before any work, so that a bad --out costs nothing)."""
        why = out_problem(path, folder=folder)
        if why:
            self.error(f"{flag}: {why}")
        return Path(path)

    def error(self, message: str) -> None:  # type: ignore[override]
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        print(f"error: {message}; usage: {usage}", file=sys.stderr)
        raise SystemExit(2)
