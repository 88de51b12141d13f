"""Named experiments: ``experiment=NAME`` applies ``experiments/NAME.yaml`` from any directory.

Each file in the top-level ``experiments/`` folder is a ``# @package _global_`` Hydra config
that states only what it changes (its own ``defaults`` list may ``override /scheme: …``). Hydra
looks up group options under a search-path root, i.e. it would want ``<root>/experiment/NAME``;
to keep the files where they are and independent of the working directory, `register` stores
each one in Hydra's ConfigStore as group ``experiment`` (package ``_global_``) when the harness's
CLI module is imported. ``conf/config.yaml`` lists ``experiment: null`` after ``_self_``, so
``experiment=NAME`` is an ordinary group choice whose values win over the primary config.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
GROUP = "experiment"


def names() -> list[str]:
    """The experiments available (the YAML files in experiments/)."""
    if not EXPERIMENTS_DIR.is_dir():
        return []
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


def register() -> None:
    """Store every experiments/*.yaml in Hydra's ConfigStore (group ``experiment``)."""
    store = ConfigStore.instance()
    for name in names():
        node = OmegaConf.load(EXPERIMENTS_DIR / f"{name}.yaml")
        store.store(name=name, node=node, group=GROUP, package="_global_", provider="harness")
