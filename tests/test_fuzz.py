"""Never a traceback: property-based fuzzing of every entry point (the bad-input specification).

The harness promises that bad input gets one line, not a traceback. These Hypothesis tests draw
command lines and arguments that mix valid values with invalid ones (wrong type, NaN, ±inf,
huge, negative, empty, unicode, lists where scalars go, unknown keys with and without `+`) and
check the contract of every entry point:

- `python -m harness.run`: exit 0 with a complete result, or exit 2 with exactly one line on
  stderr (`error: …`) and no run folder. Most command lines go through the CLI's own precheck
  (`harness.cli.precheck`: `check_overrides` + `Spec.from_config`, in-process, nothing written);
  `Spec.from_config` itself gets many more configs as Python values; a seeded subset with tiny
  sizes runs end to end (`harness.run.execute`, what the Hydra task calls after the precheck).
- `harness.run(...)` (the Python API): a Result, or ConfigError with a one-line message.
- `harness.report`, `harness.papers`, `harness.phase`, `harness.gains`, `harness.bench`
  (`main(argv)` in-process): their result, or exit 2 with one line (`harness.cli.ArgumentParser`'s
  convention `error: WHAT; usage: …`).

Every test is seeded (`derandomize=True`) with bounded example counts, so the default suite is
the same every time and fast; the `slow` variants draw many more examples (`-m slow`). The
failing command lines found so far are kept as explicit regression tests at the end.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

import harness
from harness import bench, gains, papers, phase, report
from harness.cli import CONF_DIR, compose_config, groups, precheck
from harness.core import activations, schemes
from harness.core.spec import ConfigError, Spec
from harness.core.validate import INT_MAX, SCALE_MAX, VARIANCE_MAX
from harness.outputs.results import METRICS, UnreadableResultsWarning, load
from harness.run import execute
from tests.conftest import expect_one_line_error


def seeded(n: int) -> settings:
    """Hypothesis settings: derandomized (the same examples every run), n examples, no deadline
    (a loaded machine is slow, not wrong), no example database (nothing written to the repo)."""
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    phases=(Phase.explicit, Phase.generate, Phase.shrink),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# ---- values ---------------------------------------------------------------------------------
#: values no key accepts as a number, or accepts only at its edge: Hydra override syntax
BAD = ["nan", "inf", "-inf", "+inf", "1e308", "-1e308", "1e-320", "-1", "0", "-0.0", "2.5",
       "99999999999999999999", str(2**63), str(2**63 - 1), str(-(2**63)), "''", "", "null", "true",
       "é", "'ü∂≈ ✓'", "[1,2]", "[]", "[nan]", "{a: 1}", "abc", "0x10", "1_000", "${depth}",
       "${nope}", "1,2", "[[1]]", "'1e308'", "4294967296", "18446744073709551616"]

#: valid (or nearly valid) values per key; a key draws these or BAD or random ones
VALID: dict[str, list[str]] = {
    "arch": ["mlp", "conv"], "mode": ["fan_in", "fan_out", "fan_avg", "fan_geo_avg"],
    "depth": ["1", "2", "3"], "width": ["1", "2", "4"], "widths": ["[2,3,4]", "[4,4]", "[3,3,3]", "null"],
    "bias_std": ["0", "0.1", "3", "4294967295"], "input_var": ["1", "0.5", "1e-30", "1e19"],
    "input_corr": ["0", "0.5", "1"], "jacobian": ["0", "1", "2"], "batch": ["1", "2", "4"],
    "replicates": ["1", "2"], "seed": ["0", "7", str(INT_MAX)], "device": ["auto", "cpu", "cuda"],
    "dtype": ["float32", "float64"], "kernel": ["1", "3"], "image": ["1", "3", "4"],
    "padding_mode": ["zeros", "circular"], "conv_dim": ["1", "2"],
    "memory_budget_mb": ["1", "2048", "0.001"], "plot": ["false"], "progress": ["false"],
    "scheme": list(schemes.NAMES), "act": list(activations.NAMES),
    "launcher": ["local", "slurm", "nope"], "experiment": groups()["experiment"] + ["nope"],
    "scheme.gain": ["1", "2", "exact", "null", "1e9"],
    "scheme.nonlinearity": ["relu", "tanh", "linear", "selu"],
    "scheme.a": ["0", "0.2", "-3"], "scheme.scale": ["1", "2", "1e19"],
    "scheme.distribution": ["truncated_normal", "uniform", "untruncated_normal", "normal"],
    "scheme.mean": ["0", "1"], "scheme.std": ["1", "0.02", "1e9"], "scheme.b": ["2", "-2"],
    "scheme.sigma_w2": ["1", "2", "1e19"], "scheme.sigma_b2": ["0", "0.05", "1e19"],
    "scheme.tol": ["0.1", "1e19"], "scheme.max_iter": ["1", "10"],
    "act.negative_slope": ["0.01", "0.2", "-4e9"], "act.alpha": ["1", "1e9"], "act.beta": ["1", "-1", "1e9"],
}
#: the keys whose values set the cost of a run: end to end, they draw tiny or invalid values only
SIZE_KEYS = ("depth", "width", "widths", "batch", "replicates", "jacobian", "kernel", "image")
TINY = {"depth": "2", "width": "3", "batch": "2", "replicates": "2", "plot": "false", "progress": "false",
        "memory_budget_mb": "64"}

numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda x: repr(x) if math.isfinite(x) else str(x)),
)
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)
ident = st.from_regex(r"[a-z_][a-z0-9_]{0,7}", fullmatch=True)


def value(key: str, *, tiny: bool = False) -> st.SearchStrategy[str]:
    """A value for `key`: its valid ones, the shared BAD ones, random numbers or text (not huge
    sizes if `tiny`)."""
    valid = st.sampled_from(VALID.get(key, ["1"]))
    if tiny and key in SIZE_KEYS:
        small = [v for v in BAD if v not in ("1e308", "99999999999999999999", str(2**63), str(2**63 - 1),
                                             "4294967296", "18446744073709551616", "0x10", "1_000")]
        return st.one_of(valid, st.sampled_from(small))
    return st.one_of(valid, valid, st.sampled_from(BAD), numbers, texts)


@st.composite
def command_line(draw, *, tiny: bool = False, unknown: bool = True) -> list[str]:
    """1–6 overrides `[+|++]key=value`, distinct keys (known and, if `unknown`, made-up ones)."""
    known = list(VALID)
    if tiny:  # end to end: no launcher (single runs) and the output switches stay off
        known = [k for k in known if k not in ("launcher", "plot", "progress")]
    key_st = st.sampled_from(known)
    if unknown:
        key_st = st.one_of(key_st, key_st, key_st, ident, ident.map(lambda s: f"scheme.{s}"),
                           ident.map(lambda s: f"act.{s}"))
    keys = draw(st.lists(key_st, min_size=1, max_size=6, unique=True))
    out = []
    for k in keys:
        prefix = draw(st.sampled_from(["", "", "", "+", "++"])) if unknown else ""
        out.append(f"{prefix}{k}={draw(value(k, tiny=tiny))}")
    return out


def one_line_exit(call, *args) -> tuple[int, str, str]:
    """Run `call(*args)` capturing stdout/stderr: (exit code, stdout, stderr); 0 if it returns.
    Any other exception propagates (a traceback: the test fails)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            call(*args)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, err: str, what: object) -> None:
    assert code == 2, (what, code, err)
    assert err.count("\n") == 1 and err.startswith("error: ") and err.endswith("\n"), (what, err)


@contextlib.contextmanager
def empty_cwd():
    """A fresh empty working directory (so that 'no files written' can be checked)."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        try:
            yield Path(d)
        finally:
            os.chdir(old)


# ---- python -m harness.run: the precheck -----------------------------------------------------
def check_precheck(argv: list[str]) -> None:
    with empty_cwd() as cwd:
        code, _, err = one_line_exit(precheck, argv)
        assert list(cwd.iterdir()) == [], argv  # the precheck writes nothing
    if code == 0:  # accepted: the precheck built the run's Spec
        assert err == "", (argv, err)
    else:
        assert_one_line_error(code, err, argv)


@seeded(20)
@given(command_line())
def test_run_command_line_is_a_result_or_one_line(argv):
    check_precheck(argv)


@pytest.mark.slow
@seeded(500)
@given(command_line())
def test_run_command_line_is_a_result_or_one_line_many(argv):
    check_precheck(argv)


@seeded(10)
@given(command_line(), st.sampled_from(["--multirun", "-m"]))
def test_multirun_command_line_is_checked_or_one_line(argv, flag):
    """With --multirun the values are checked per job; the keys and groups still up front."""
    with empty_cwd() as cwd:
        code, _, err = one_line_exit(precheck, [flag, *argv])
        assert list(cwd.iterdir()) == []
    if code:
        assert_one_line_error(code, err, argv)


# ---- Spec.from_config: configs as Python values -----------------------------------------------
py_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True), texts,
    st.sampled_from([2**63, 2**63 - 1, 2**64, SCALE_MAX, VARIANCE_MAX, 1e308, 5e-324, -0.0]),
    st.lists(st.integers(-3, 5), max_size=4), st.dictionaries(ident, st.integers(), max_size=2),
)


@st.composite
def config(draw) -> dict:
    """A composed default config (random scheme, act, arch) with 1–6 keys set to Python values."""
    cfg = base_config(draw(st.sampled_from(list(schemes.NAMES))),
                      draw(st.sampled_from(list(activations.NAMES))))
    for k in draw(st.lists(st.sampled_from([k for k in VALID if k not in ("launcher", "experiment")]),
                           min_size=1, max_size=6, unique=True)):
        v = draw(st.one_of(st.sampled_from(VALID[k]).map(_literal), py_values))
        if "." in k:
            group, sub = k.split(".")
            if isinstance(cfg[group], dict):
                cfg[group][sub] = v
        elif k in ("scheme", "act"):
            cfg[k] = v if not isinstance(v, str) else {**cfg[k], "name": v}
        else:
            cfg[k] = v
    return cfg


DEFAULT = OmegaConf.to_container(compose_config([]))


def base_config(scheme: str, act: str) -> dict:
    """The config the CLI composes for scheme=…, act=…: the default one with those groups' YAML
    files (conf/scheme/NAME.yaml, conf/act/NAME.yaml) as the scheme and act nodes."""
    return {**DEFAULT,
            "scheme": OmegaConf.to_container(OmegaConf.load(CONF_DIR / "scheme" / f"{scheme}.yaml")),
            "act": OmegaConf.to_container(OmegaConf.load(CONF_DIR / "act" / f"{act}.yaml"))}


def _literal(text: str):
    """A VALID entry as the Python value Hydra would parse it to (numbers, null, lists)."""
    return OmegaConf.create({"v": text})["v"] if not text.startswith("[") else OmegaConf.to_container(
        OmegaConf.create({"v": text}))["v"]


def check_spec(cfg: dict) -> None:
    try:
        spec = Spec.from_config(cfg)
    except ConfigError as e:
        assert "\n" not in str(e) and str(e), repr(e)
        return
    # accepted: the bounds hold, so every variance's square is finite in float32
    assert spec.seed <= INT_MAX and spec.bias_std < SCALE_MAX and spec.input_var < VARIANCE_MAX
    assert all(math.isfinite(v) for v in (spec.bias_std**2, spec.input_var**2))
    spec.columns()


@seeded(250)
@given(config())
def test_spec_accepts_or_raises_one_line(cfg):
    check_spec(cfg)


@pytest.mark.slow
@seeded(5000)
@given(config())
def test_spec_accepts_or_raises_one_line_many(cfg):
    check_spec(cfg)


# ---- python -m harness.run end to end (tiny sizes) -----------------------------------------------
def check_end_to_end(argv: list[str]) -> None:
    drawn = {o.lstrip("+").split("=", 1)[0] for o in argv}
    full = [f"{k}={v}" for k, v in TINY.items() if k not in drawn] + argv
    with empty_cwd() as cwd:
        code, _, err = one_line_exit(precheck, full)
        if code:
            assert_one_line_error(code, err, full)
            assert list(cwd.iterdir()) == [], full  # no run folder
            return
        run_dir = cwd / "run"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # overflow in deep/extreme configs is carried, not raised
            res = execute(compose_config(full), run_dir, echo=False)
        assert (run_dir / METRICS).is_file() and (run_dir / "metadata.json").is_file(), full
        frame = load(run_dir)
        assert len(frame) == len(res.frame) > 0 and frame.attrs["unreadable"] == [], full


@seeded(10)
@given(command_line(tiny=True, unknown=False))
def test_run_end_to_end_is_a_complete_result_or_one_line(argv):
    check_end_to_end(argv)


@pytest.mark.slow
@seeded(150)
@given(command_line(tiny=True, unknown=False))
def test_run_end_to_end_is_a_complete_result_or_one_line_many(argv):
    check_end_to_end(argv)


# ---- the Python API: harness.run(...) --------------------------------------------------------------
api_kwargs = st.dictionaries(
    st.sampled_from(["bias_std", "input_var", "seed", "depth", "width", "act", "scheme", "dtype", "mode",
                     "input_corr", "widths"]) | ident,
    py_values, max_size=3)


def check_api(argv: list[str], kwargs: dict) -> None:
    drawn = {o.lstrip("+").split("=", 1)[0] for o in argv} | set(kwargs)
    tiny = {k: v for k, v in TINY.items() if k not in drawn and k not in ("plot", "progress")}
    tiny = {k: v for k, v in tiny.items() if not (k == "depth" and "widths" in drawn)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            r = harness.run(*argv, **{k: int(v) if v.isdigit() else v for k, v in tiny.items()}, **kwargs)
        except ConfigError as e:
            assert str(e) and "\n" not in str(e), repr(e)
            return
    assert len(r.frame) > 0


def check_api_small(argv: list[str], kwargs: dict) -> None:
    # huge sizes from kwargs would be a long run, not a traceback: keep them small here
    kwargs = {k: v for k, v in kwargs.items() if not (k in SIZE_KEYS and isinstance(v, int) and v > 4)}
    check_api(argv, kwargs)


@seeded(12)
@given(command_line(tiny=True), api_kwargs)
def test_api_run_is_a_result_or_one_line_config_error(argv, kwargs):
    check_api_small(argv, kwargs)


@pytest.mark.slow
@seeded(100)
@given(command_line(tiny=True), api_kwargs)
def test_api_run_is_a_result_or_one_line_config_error_many(argv, kwargs):
    check_api_small(argv, kwargs)


# ---- the other commands: report, papers, phase, gains, bench ----------------------------------------
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Paths a user might pass: a complete run, a sweep with one unreadable result, a folder of
    unreadable results only, an empty folder, a plain file, a missing path."""
    root = tmp_path_factory.mktemp("fuzz")
    run = root / "run"
    execute(compose_config([f"{k}={v}" for k, v in TINY.items()]), run, echo=False)
    mixed = root / "mixed"
    shutil.copytree(run, mixed / "act=relu")
    (mixed / "act=tanh").mkdir()
    (mixed / "act=tanh" / METRICS).write_bytes((run / METRICS).read_bytes()[:200])  # truncated
    broken = root / "broken"
    (broken / "a").mkdir(parents=True)
    (broken / "a" / METRICS).write_text("not parquet")
    (broken / "b").mkdir()
    (broken / "b" / METRICS).write_bytes(b"")
    (root / "empty").mkdir()
    (root / "file.txt").write_text("x")
    return {"run": run, "mixed": mixed, "broken": broken, "empty": root / "empty",
            "file": root / "file.txt", "missing": root / "missing", "root": root,
            "nul": f"{root}/a\x00b", "long": str(root / ("x" * 300))}


paths = st.sampled_from(["run", "mixed", "broken", "empty", "file", "missing", "nul", "long"])
flag_values = st.one_of(st.sampled_from(BAD), numbers, texts)


@st.composite
def out_arg(draw, folders, suffix: str = "") -> list[str]:
    """--out: absent, a fresh path, a path under a plain file, an existing file, or odd text."""
    kind = draw(st.sampled_from(["none", "fresh", "under_file", "file", "text", "nul"]))
    root = folders["root"]
    if kind == "none":
        return []
    if kind == "fresh":
        return ["--out", str(root / "out" / f"o{draw(st.integers(0, 10**6))}{suffix}")]
    if kind == "nul":
        return ["--out", folders["nul"]]
    if kind == "under_file":
        return ["--out", str(folders["file"] / f"sub{suffix}")]
    if kind == "file":
        return ["--out", str(folders["file"])]
    odd = draw(texts.filter(lambda t: t and not t.startswith("-") and "\x00" not in t))
    return ["--out", str(root / "odd" / odd)]


def check_command(main, argv: list[str]) -> None:
    code, _, err = one_line_exit(main, argv)
    if code:
        assert_one_line_error(code, err, argv)


@seeded(15)
@given(st.data())
def test_report_is_a_report_or_one_line(folders, data):
    check_report_is_a_report_or_one_line(folders, data)


@pytest.mark.slow
@seeded(100)
@given(st.data())
def test_report_is_a_report_or_one_line_many(folders, data):
    check_report_is_a_report_or_one_line(folders, data)


def check_report_is_a_report_or_one_line(folders, data) -> None:
    argv = [str(folders[data.draw(paths)])]
    if data.draw(st.booleans()):
        argv += [data.draw(st.sampled_from(["--k", "--alpha"])), data.draw(flag_values)]
    argv += data.draw(out_arg(folders))
    if data.draw(st.booleans()):
        argv.append(data.draw(st.sampled_from(["--bogus", "-x", "extra", "--k"])))
    check_command(report.main, argv)


@seeded(15)
@given(st.data())
def test_papers_and_phase_are_a_figure_or_one_line(folders, data):
    check_papers_and_phase_are_a_figure_or_one_line(folders, data)


@pytest.mark.slow
@seeded(100)
@given(st.data())
def test_papers_and_phase_are_a_figure_or_one_line_many(folders, data):
    check_papers_and_phase_are_a_figure_or_one_line(folders, data)


def check_papers_and_phase_are_a_figure_or_one_line(folders, data) -> None:
    cmd = data.draw(st.sampled_from(["papers", "phase"]))
    argv = [str(folders[data.draw(paths)])]
    if cmd == "papers":
        argv = [data.draw(st.sampled_from([*sorted(papers.EXPERIMENTS), "nope", ""]) | texts), *argv]
    argv += data.draw(out_arg(folders, ".png"))
    if data.draw(st.booleans()):
        argv.append(data.draw(st.sampled_from(["--bogus", "extra", "--out"])))
    check_command(papers.main if cmd == "papers" else phase.main, argv)


@seeded(10)
@given(st.data())
def test_gains_and_bench_arguments_are_checked_or_one_line(folders, data):
    check_gains_and_bench_arguments_are_checked_or_one_line(folders, data)


@pytest.mark.slow
@seeded(100)
@given(st.data())
def test_gains_and_bench_arguments_are_checked_or_one_line_many(folders, data):
    check_gains_and_bench_arguments_are_checked_or_one_line(folders, data)


def check_gains_and_bench_arguments_are_checked_or_one_line(folders, data) -> None:
    """gains: --out (a table, 1 s); bench: its arguments only (`bench.parse`), not a benchmark."""
    if data.draw(st.booleans()):
        argv = data.draw(out_arg(folders))
        if data.draw(st.booleans()):
            argv.append(data.draw(st.sampled_from(["--bogus", "extra", "--out"])))
        with empty_cwd():  # the default --out is results/gains under the working directory
            check_command(gains.main, argv)
        return
    argv = []
    for flag in data.draw(st.lists(st.sampled_from(["--device", "--dtype", "--repeat", "--min-time"]),
                                   unique=True, max_size=3)):
        argv += [flag, data.draw(st.one_of(flag_values, st.sampled_from(["cpu", "float64", "3"])))]
    argv += data.draw(out_arg(folders))
    if data.draw(st.booleans()):
        argv.append(data.draw(st.sampled_from(["--quick", "--no-naive", "--bogus"])))
    check_command(bench.parse, argv)


# ---- unreadable results ---------------------------------------------------------------------------
def test_load_skips_unreadable_results_warns_once_and_counts_them(folders):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = load(folders["mixed"])
    ours = [w for w in caught if issubclass(w.category, UnreadableResultsWarning)]
    bad = str((folders["mixed"] / "act=tanh" / METRICS).resolve())
    assert len(ours) == 1 and bad in str(ours[0].message)
    assert frame.attrs["unreadable"] == [bad]
    assert set(frame["run_dir"]) == {str((folders["mixed"] / "act=relu").resolve())}


def test_load_of_nothing_readable_is_file_not_found_naming_them(folders):
    with pytest.raises(FileNotFoundError, match=r"no readable metrics.parquet .*2 unreadable"):
        load(folders["broken"])


def test_report_lists_unreadable_results_in_its_sweep_summary(folders, tmp_path):
    code, out, err = one_line_exit(report.main, [str(folders["mixed"]), "--out", str(tmp_path)])
    assert code == 0 and "1 unreadable" in out, (out, err)
    page = (tmp_path / "report.html").read_text()
    summary = page[page.index("id='summary'"):page.index("id='agreement'")]
    assert "unreadable (will be recomputed on resume)" in summary and "act=tanh" in summary


def test_report_of_nothing_readable_is_one_line(folders):
    code, _, err = one_line_exit(report.main, [str(folders["broken"])])
    assert_one_line_error(code, err, "broken")
    assert "no readable metrics.parquet" in err


# ---- regressions: the command lines issue 19 found -----------------------------------------------
@pytest.mark.parametrize(("argv", "message"), [
    # two unknown keys: check_overrides re-composed without the first and the second raised
    (["act.negative_slope=nan", "scheme.sigma_w2=0"],
     "unknown config key 'act.negative_slope'; keys under act: name"),
    (["scheme.sigma_w2=0", "act.negative_slope=nan"], "unknown config key 'scheme.sigma_w2'"),
    (["foo.bar=1", "baz=2", "qux.x=3"], "unknown config key 'foo'; keys: scheme, act, norm, arch"),
    (["seed=99999999999999999999"], "seed must be an integer ≥ 0 and < 2^63; got 99999999999999999999"),
    (["seed=9223372036854775808"], "seed must be an integer ≥ 0 and < 2^63"),
    # found by the Spec fuzz: depth 2^32 − 1 built a tuple of 2^32 widths (MemoryError)
    (["depth=4294967295"], "depth must be an integer ≥ 1 and ≤ 1048576; got 4294967295"),
    (["bias_std=1e308"], "bias_std must be a finite number ≥ 0 and < 2^32; got 1e+308"),
    (["input_var=1e300"], "input_var must be a finite number > 0 and < 2^64"),
    (["scheme=meanfield", "scheme.sigma_w2=1e300"], "scheme.sigma_w2 must be a finite number > 0 and < 2^64"),
    (["scheme.gain=1e300"], "scheme.gain must be a finite number > 0 and < 2^32, or exact"),
    (["act=leaky_relu", "act.negative_slope=1e300"], "|act.negative_slope| < 2^32"),
    (["scheme=kaiming", "scheme.a=1e200"], "|scheme.a| < 2^32"),
    (["+extra_key=1"], "unknown config key 'extra_key': the harness would ignore it; the keys it reads: "
                       "scheme, act, norm, arch"),
    (["++extra_key=1", "depth=3"], "unknown config key 'extra_key'"),
    (["depth=1,2"], "'depth=1,2' sweeps depth over several values: add --multirun"),
    (["depth=${nope}"], "Interpolation key 'nope' not found"),
])
def test_found_by_fuzzing_is_one_line(argv, message, capsys):
    expect_one_line_error(argv, message, capsys)


def test_the_largest_allowed_values_run_and_overflow_is_carried(tmp_path):
    """At the bounds a run completes: seed 2^63 − 1, bias_std just under 2^32 (float32 overflows
    as it propagates: inf/nan carried in the frame and named by layer, never raised)."""
    cfg = compose_config([f"{k}={v}" for k, v in TINY.items()]
                         + [f"seed={INT_MAX}", "bias_std=4294967295", "act=tanh", "input_var=1.8e19"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = execute(cfg, tmp_path, echo=False)
    assert res.spec.seed == INT_MAX and (tmp_path / METRICS).is_file()


def test_a_plus_key_the_harness_reads_is_fine():
    """`+` on a key the config already has (Hydra: ++ forces) is not an unknown key."""
    Spec.from_config(compose_config(["++seed=3"]))
    precheck(["++seed=3", "depth=2"])


@pytest.mark.parametrize("name", groups()["experiment"])
def test_every_experiment_passes_the_key_check(name):
    """An experiment's own keys (pennington2017's `critical` table) are keys the harness reads."""
    precheck(["--multirun", f"experiment={name}"])


def test_a_sweep_is_fine_where_hydra_runs_a_multirun():
    """An experiment that sets hydra.mode=MULTIRUN (phase_diagram) sweeps without --multirun."""
    precheck(["experiment=phase_diagram", "scheme.sigma_w2=0.5,3"])
    precheck(["hydra.mode=MULTIRUN", "depth=2,3"])
