"""Launcher plugins for `--multirun` sweeps: which plugin each `launcher=` choice needs, and how
many torch threads each job may use so that parallel jobs × threads stays within the cores.

`conf/launcher/<choice>.yaml` selects a Hydra launcher plugin (`override /hydra/launcher: X`).
Without `launcher=`, Hydra's basic launcher runs the jobs one after another in this process.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

#: hydra/launcher option -> (module the plugin provides, its pip name, the harness extra holding it)
PLUGINS: dict[str, tuple[str, str, str]] = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher", "launchers"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "launchers"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "launchers"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher", "ray"),
}


def hydra_launcher(choice_file: Path) -> str | None:
    """The hydra/launcher option a conf/launcher/<choice>.yaml file overrides, or None."""
    defaults = OmegaConf.load(choice_file).get("defaults") or []
    for entry in defaults:
        if isinstance(entry, Mapping) or OmegaConf.is_dict(entry):
            for key, value in entry.items():
                if str(key).replace("override", "").strip() in ("/hydra/launcher", "hydra/launcher"):
                    return str(value)
    return None


def missing_plugin(choice: str, choice_file: Path) -> str | None:
    """A one-line message if `launcher=<choice>` needs a plugin that is not installed, else None."""
    plugin = hydra_launcher(choice_file)
    if plugin not in PLUGINS:
        return None
    module, pip_name, extra = PLUGINS[plugin]
    if plugin_installed(module):
        return None
    return (f"launcher={choice} needs the {pip_name} plugin, which is not installed; install it "
            f"with pip install -e '.[{extra}]' (or leave out launcher= for Hydra's basic launcher)")


def plugin_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def job_threads(launcher: Mapping[str, Any], n_cores: int) -> tuple[int | None, str]:
    """(torch threads for one job, why) under the Hydra launcher config `launcher`.

    None means "leave torch's default": the basic launcher runs one job at a time.
    joblib runs n_jobs at once (-1 = n_cores, -2 = n_cores - 1, ...), so each job gets
    n_cores // n_jobs; submitit (local and SLURM) gives each job `cpus_per_task`; Ray gives
    each task `remote.num_cpus` (1 unless set).
    """
    target = str(launcher.get("_target_", ""))
    if "JoblibLauncher" in target:
        n = int(launcher.get("n_jobs", -1) or -1)
        if n < 0:
            n = max(1, n_cores + 1 + n)
        return max(1, n_cores // n), f"joblib n_jobs={n} on {n_cores} cores"
    if "submitit_launcher" in target:
        cpus = launcher.get("cpus_per_task")
        if cpus:
            return int(cpus), f"submitit cpus_per_task={cpus}"
        return 1, "submitit without cpus_per_task"
    if "ray_launcher" in target:
        ray = launcher.get("ray") or {}
        cpus = (ray.get("remote") or {}).get("num_cpus") or 1
        return max(1, int(cpus)), f"ray remote num_cpus={cpus}"
    return None, "basic launcher: one job at a time"
