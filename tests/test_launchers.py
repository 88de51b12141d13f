"""Launcher choices: checked before Hydra runs (one line, exit 2), and threads per job."""

from __future__ import annotations

import pytest

from harness.cli import CONF_DIR, launchers, precheck

needs_submitit = pytest.mark.skipif(
    not launchers.plugin_installed("hydra_plugins.hydra_submitit_launcher"),
    reason="hydra-submitit-launcher not installed (pip install -e '.[launchers]')")


def one_line_error(args, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        precheck(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_unknown_launcher_lists_the_choices(capsys):
    err = one_line_error(["--multirun", "launcher=dask", "depth=2,3"], capsys)
    assert "unknown launcher 'dask'; allowed: local, ray, slurm, submitit_local" in err


def test_a_launcher_cannot_be_swept(capsys):
    err = one_line_error(["--multirun", "launcher=local,slurm", "depth=2,3"], capsys)
    assert "launcher cannot be swept" in err


@pytest.mark.parametrize(("choice", "pip_name", "extra"), [
    ("local", "hydra-joblib-launcher", "launchers"),
    ("slurm", "hydra-submitit-launcher", "launchers"),
    ("submitit_local", "hydra-submitit-launcher", "launchers"),
    ("ray", "hydra-ray-launcher", "ray"),
])
def test_a_missing_plugin_is_one_clear_line(choice, pip_name, extra, capsys, monkeypatch):
    monkeypatch.setattr(launchers, "plugin_installed", lambda module: False)
    err = one_line_error(["--multirun", f"launcher={choice}", "depth=2,3"], capsys)
    assert (f"launcher={choice} needs the {pip_name} plugin, which is not installed; install it "
            f"with pip install -e '.[{extra}]'") in err


def test_every_launcher_file_names_a_known_plugin():
    for f in sorted((CONF_DIR / "launcher").glob("*.yaml")):
        assert launchers.hydra_launcher(f) in launchers.PLUGINS, f.name


@pytest.mark.parametrize(("launcher", "cores", "threads"), [
    ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 8, None),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -1}, 8, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 3}, 8, 2),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -3}, 8, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 16}, 8, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 1}, 8, 8),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
      "cpus_per_task": 4}, 64, 4),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
      "cpus_per_task": None}, 8, 1),
    ({"_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
      "ray": {"remote": {"num_cpus": 2}}}, 8, 2),
])
def test_jobs_times_threads_stays_within_the_cores(launcher, cores, threads):
    n, why = launchers.job_threads(launcher, cores)
    assert n == threads and why
    if "n_jobs" in launcher and launcher["n_jobs"] <= cores:
        jobs = launcher["n_jobs"] if launcher["n_jobs"] > 0 else cores + 1 + launcher["n_jobs"]
        assert jobs * n <= cores


@needs_submitit
def test_launcher_slurm_composes_with_its_queue_settings():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=["launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert launchers.job_threads(cfg.hydra.launcher, 64) == (4, "submitit cpus_per_task=4")
    assert "launcher" not in cfg  # the group only selects Hydra's launcher
