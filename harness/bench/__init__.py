"""`python -m harness.bench`: the batched runner against the naive loop and the machine's limits.

For each configuration of a grid it measures, in one process on one machine:

- the harness runner (`harness.sim.runner.measure`), best of `--repeat` timings;
- the naive baseline a researcher writes without the harness (`naive_measure`): one
  nn.Sequential per replicate, filled by the torch.nn.init function of the scheme, forward hooks
  for the activation moments, tensor hooks for the gradient moments, parameters with
  requires_grad as usual, one `.item()` per statistic;
- the machine's limits: matmul throughput (FLOP/s) and random-number throughput (numbers/s with
  one generator stream), which give a roofline time per configuration

      t_roof = FLOPs / peak_flops + random_numbers / rng_rate,
      FLOPs = Σ_l R·(2·B·n_{l-1}·n_l  [forward]  +  2·B·n_{l-1}·n_l  [δ^{l-1}, l > 1]),
      random numbers = Σ_l R·n_{l-1}·n_l  (+ inputs, cotangents, biases);

and reports speedup = t_naive / t_harness, roofline fraction = t_roof / t_harness and the peak
memory of the harness run (CUDA: max_memory_allocated; CPU: the larger of the sampled
resident-set growth and the run's workspace). The limits are probed between the harness's timed
runs of each configuration (`LimitProbe`: one 2048² matmul and one 16M-number fill after each
run, the best of each kept), so both are timed in the same window: on a shared machine the speed
drifts by tens of percent within seconds, and a roofline from limits measured at another moment
would be off by as much. Every time is the best of at least `--repeat` runs and `--min-time`
seconds.
The table is printed and written (with a figure) to `--out` (default results/bench/<time>/).

Two more tables put the runner in the whole of what a user waits for:

- whole run (`whole_run`): one configuration (default R=64 networks, depth 50, width 64,
  batch 64, kaiming + relu) timed in-process as `python -m harness.run` runs it
  (`harness.api.compute` + `harness.api.write`: measure, theory, frame, band, files, figure)
  beside `measure` alone and the naive loop, interleaved in one loop so that all three see the
  same load; it reports naive / whole (target ≥ 5×) and everything beyond `measure` (the whole
  run's time less its own measurement; target ≤ 0.25 s), with the parts: theory and frame,
  files, figure;
- start-up (`startup`): fresh interpreters, interleaved: `import torch`, `import harness.run`,
  a trivial CLI run (depth 1, width 64, batch 1, 1 replicate) with and without its figure; the
  gap over `import torch` (target ≤ 1.5 s for the trivial run).

Each table carries the 1-minute load average (`os.getloadavg`) at its end: on a shared machine a
time means little without it.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from harness import api
from harness.cli import ArgumentParser, compose_config
from harness.core.init import init_
from harness.core.init import scheme as scheme_entry
from harness.core.spec import DEVICES, DTYPES, ConfigError, Spec
from harness.outputs import plots
from harness.outputs.results import write_parquet
from harness.sim import reference, workspace
from harness.sim.runner import measure

#: the most timings of one configuration (`best_time`'s max_repeat): --repeat is at most this
MAX_REPEAT = 50
#: (arch, depth, width, batch, replicates[, extra overrides]) of the default grid; conv: 3×3,
#: 16×16 images; the normalized rows (norm=…) time the norms' batched path
DEFAULT_GRID: list[tuple] = [
    ("mlp", 50, 64, 64, 64),
    ("mlp", 20, 64, 128, 64),
    ("mlp", 20, 256, 128, 16),
    ("mlp", 50, 256, 256, 8),
    ("mlp", 100, 256, 256, 8),
    ("mlp", 20, 1024, 256, 8),
    ("conv", 20, 16, 32, 16),
    ("conv", 20, 64, 32, 8),
    ("resmlp", 20, 256, 128, 16),
    ("resmlp", 50, 256, 256, 8),
    ("resconv", 10, 16, 32, 8),
    ("mlp", 20, 256, 128, 16, ("norm=batchnorm",)),
    ("mlp", 20, 256, 128, 16, ("norm=layernorm",)),
    ("mlp", 20, 256, 128, 16, ("norm=rmsnorm", "norm.position=post")),
    ("resmlp", 20, 256, 128, 16, ("norm=batchnorm",)),
    ("resmlp", 20, 256, 128, 16, ("norm=layernorm", "norm.position=post")),
]
QUICK_GRID: list[tuple] = [("mlp", 10, 32, 16, 8), ("mlp", 5, 128, 32, 4), ("conv", 3, 8, 4, 2),
                           ("resmlp", 5, 32, 16, 4), ("resconv", 2, 4, 4, 2),
                           ("mlp", 5, 32, 16, 4, ("norm=layernorm",)),
                           ("resmlp", 3, 32, 16, 4, ("norm=batchnorm", "norm.position=post"))]
#: the whole-run configuration (R=64 networks, depth 50, width 64, batch 64, kaiming + relu) and
#: a small one for --quick
WHOLE_RUN = ["depth=50", "width=64", "batch=64", "replicates=64", "act=relu", "scheme=kaiming"]
WHOLE_RUN_QUICK = ["depth=10", "width=32", "batch=16", "replicates=8", "act=relu", "scheme=kaiming"]
#: the start-up commands: (label, python arguments); {out} is a scratch folder
TRIVIAL_RUN = ["-m", "harness.run", "depth=1", "width=64", "batch=1", "replicates=1",
               "progress=false", "hydra.run.dir={out}"]
STARTUP = [
    ("import torch", ["-c", "import torch"]),
    ("import harness.run", ["-c", "import harness.run"]),
    ("trivial run", TRIVIAL_RUN),
    ("trivial run, plot=false", [*TRIVIAL_RUN, "plot=false"]),
]
#: the grid's keys of its own per architecture
ARCH_KEYS = {"conv": ["kernel=3", "image=16"], "resconv": ["kernel=3", "image=16"]}


# ---- the naive baseline -----------------------------------------------------------------------
def _torch_init(spec: Spec) -> Callable[[torch.Tensor, torch.Generator], None]:
    """The torch.nn.init call a researcher would write for this scheme, for one weight (its
    registry entry's `torch_init`); where there is none (Keras/JAX presets, meanfield,
    trunc_normal, ...) the same distribution drawn for this one weight."""
    fn = scheme_entry(spec.scheme).torch_init(spec.gain, spec.mode, spec.nonlinearity, spec.a)
    if fn is not None:
        return fn
    return lambda w, g: init_(w.unsqueeze(0), spec.scheme, generator=g, **spec.init_kwargs())


def naive_networks(spec: Spec, generator: torch.Generator) -> list[nn.Sequential]:
    """One reference member (`harness.sim.reference.member`: nn.Linear or nn.Conv{1,2}d layers
    and the activation) per replicate, each layer's weight initialized by torch.nn.init and then
    its bias drawn, layer by layer."""
    init = _torch_init(spec)
    nets = []
    for _ in range(spec.replicates):
        net = reference.member(spec)
        with torch.no_grad():
            for lin in reference.layers(net):
                init(lin.weight, generator)
                if lin.bias is not None:
                    lin.bias.normal_(0.0, spec.bias_std, generator=generator)
        nets.append(net)
    return nets


def _naive_residual(net: nn.Sequential, spec: Spec, x0: torch.Tensor,
                    cot: torch.Tensor) -> dict[str, list]:
    """Hooks on one residual network (blocks with `.layers`): per block mean (x^l)², mean f_l²,
    mean (δ^l)²; per weight layer mean_b[mean_i (∂loss/∂h)² · mean_j (input)²] (outer product)."""
    blocks = list(net)
    linears = reference.layers(net)
    rec: dict[str, list] = {k: [0.0] * len(blocks) for k in ("forward", "branch", "backward")}
    rec["weight_grad"] = [0.0] * len(linears)
    x_sq: dict[int, torch.Tensor] = {}
    d_sq: dict[int, torch.Tensor] = {}

    def block_hook(l: int):
        def fwd(module, inputs, x):
            rec["forward"][l] = x.detach().square().mean().item()
            x.register_hook(lambda g: rec["backward"].__setitem__(l, g.square().mean().item()))
        return fwd

    def layer_hook(k: int, last: int | None):
        def fwd(module, inputs, h):
            x_sq[k] = inputs[0].detach().square().mean(-1)
            if last is not None:
                rec["branch"][last] = h.detach().square().mean().item()
            h.register_hook(lambda g: d_sq.__setitem__(k, g.square().mean(-1)))
        return fwd

    handles = [b.register_forward_hook(block_hook(l)) for l, b in enumerate(blocks)]
    k = 0
    for l, b in enumerate(blocks):
        for j, lin in enumerate(b.layers):
            handles.append(lin.register_forward_hook(layer_hook(k, l if j == len(b.layers) - 1 else None)))
            k += 1
    (net(x0) * cot).sum().backward()
    for h in handles:
        h.remove()
    if spec.architecture.weight_grad_is_outer_product:
        rec["weight_grad"] = [(d_sq[k] * x_sq[k]).mean().item() for k in range(len(linears))]
        return rec
    # convs: the per-example gradient sums over positions, one backward pass per example
    wg = np.zeros(len(linears))
    for b in range(x0.shape[0]):
        net.zero_grad()
        (net(x0[b : b + 1]) * cot[b : b + 1]).sum().backward()
        wg += [lin.weight.grad.square().mean().item() for lin in linears]
    rec["weight_grad"] = (wg / x0.shape[0]).tolist()
    return rec


def _naive_one(net: nn.Sequential, spec: Spec, x0: torch.Tensor, cot: torch.Tensor) -> dict[str, list]:
    """Hooks on one network: per layer mean h², mean φ(h)², mean δ², weight-gradient moment
    (residual blocks: `_naive_residual`)."""
    if any(isinstance(getattr(m, "layers", None), nn.ModuleList) for m in net):
        return _naive_residual(net, spec, x0, cot)
    L = spec.depth
    outer = spec.architecture.weight_grad_is_outer_product
    rec: dict[str, list] = {k: [0.0] * L for k in ("forward", "activation", "backward", "weight_grad")}
    x_sq: dict[int, torch.Tensor] = {}
    d_sq: dict[int, torch.Tensor] = {}

    def fwd_hook(l: int):
        def fwd(module, inputs, h):
            rec["forward"][l] = h.detach().square().mean().item()
            if outer:
                x_sq[l] = inputs[0].detach().square().mean(-1)
            if l < L - 1 and spec.normalization.identity:
                rec["activation"][l] = spec.activation.phi(h.detach()).square().mean().item()

            def bwd(grad):
                rec["backward"][l] = grad.square().mean().item()
                if outer:
                    d_sq[l] = grad.square().mean(-1)

            h.register_hook(bwd)

        return fwd

    linears = reference.layers(net)
    handles = [lin.register_forward_hook(fwd_hook(l)) for l, lin in enumerate(linears)]
    if not spec.normalization.identity:  # φ acts on N(h) (pre) or N follows it (post)
        rec["normed"] = [0.0] * (L - 1)
        phis = [m for m in net if isinstance(m, reference.Phi)]
        norms_ = [m for m in net if isinstance(m, reference.NORM_MODULES)]
        def keep(key: str, l: int):
            return lambda mod, i, o: rec[key].__setitem__(l, o.detach().square().mean().item())

        for key, mods in (("activation", phis), ("normed", norms_)):
            handles.extend(m.register_forward_hook(keep(key, l)) for l, m in enumerate(mods))
    (net(x0) * cot).sum().backward()
    for h in handles:
        h.remove()
    if not outer:
        # the per-example weight gradient sums over positions (no product identity): a plain
        # script takes one backward pass per example, as here
        wg = np.zeros(L)
        for b in range(x0.shape[0]):
            net.zero_grad()
            (net(x0[b : b + 1]) * cot[b : b + 1]).sum().backward()
            wg += [lin.weight.grad.square().mean().item() for lin in linears]
        rec["weight_grad"] = (wg / x0.shape[0]).tolist()
    else:
        rec["weight_grad"] = [(d_sq[l] * x_sq[l]).mean().item() for l in range(L)]
    rec["activation"] = rec["activation"][: L - 1]
    return rec


def naive_measure(
    spec: Spec, generator: torch.Generator | None = None, nets: list[nn.Sequential] | None = None
) -> dict[str, np.ndarray]:
    """The naive loop: per replicate, hooks record mean h², mean φ(h)², mean δ² per layer and
    the per-example weight-gradient moment mean_b[mean_i δ² · mean_j x²] (parameters keep
    requires_grad, so autograd also forms every weight gradient, as a plain script would)."""
    if generator is None:
        generator = torch.Generator(device=spec.device).manual_seed(spec.seed)
    if nets is None:
        nets = naive_networks(spec, generator)
    kw = dict(generator=generator, device=spec.device, dtype=spec.torch_dtype)
    rows = []
    for net in nets:
        x0 = torch.randn(spec.batch, spec.widths[0], *spec.spatial, **kw) * math.sqrt(spec.input_var)
        cot = torch.randn(spec.batch, spec.widths[-1], *spec.spatial, **kw)
        rows.append(_naive_one(net, spec, x0, cot))
    return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in rows[0]}


# ---- the machine's limits -----------------------------------------------------------------------
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_time(fn: Callable[[], object], device: str, repeat: int = 3, min_time: float = 0.0,
              between: Callable[[], object] | None = None, max_repeat: int = MAX_REPEAT) -> float:
    """Best wall time of at least `repeat` calls, more (up to `max_repeat`) until `min_time`
    seconds of them, after one warm-up call; `between` runs after each timed call, untimed."""
    fn()
    best, spent, n = math.inf, 0.0, 0
    while n < repeat or (spent < min_time and n < max_repeat):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        dt = time.perf_counter() - t
        best, spent, n = min(best, dt), spent + dt, n + 1
        if between is not None:
            between()
    return best


class LimitProbe:
    """The machine's limits, timed in the same window as the harness: one n×n matmul (2n³
    FLOPs) and one fill of m normal numbers from one generator per `sample()`; `limits` holds
    the best rates seen since `reset()`. Interleaving the probe with the harness's timings puts
    both under the same conditions on a shared machine, where the speed drifts by tens of
    percent within seconds."""

    def __init__(self, device: str, dtype: torch.dtype, n: int = 2048, m: int = 1 << 24):
        self.device, self.n, self.m = device, n, m
        self.a = torch.randn(n, n, device=device, dtype=dtype)
        self.b = torch.randn(n, n, device=device, dtype=dtype)
        self.out = torch.empty(n, n, device=device, dtype=dtype)
        self.noise = torch.empty(m, device=device, dtype=dtype)
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.reset()
        self.sample()  # warm up
        self.reset()

    def reset(self) -> None:
        self.t_mm = self.t_rng = math.inf

    def _time(self, fn: Callable[[], object]) -> float:
        _sync(self.device)
        t = time.perf_counter()
        fn()
        _sync(self.device)
        return time.perf_counter() - t

    def sample(self) -> None:
        self.t_mm = min(self.t_mm, self._time(lambda: torch.mm(self.a, self.b, out=self.out)))
        self.t_rng = min(self.t_rng, self._time(lambda: self.noise.normal_(generator=self.gen)))

    @property
    def limits(self) -> Limits:
        return Limits(2 * self.n**3 / self.t_mm, self.m / self.t_rng)


def workload(spec: Spec) -> tuple[float, float]:
    """(FLOPs, random numbers) the harness must spend on `spec` (see the module docstring).

    A conv layer's matmul is 2·B·C_in·∏k·C_out·P (P positions); where the per-example weight
    gradient is no outer product (conv) the runner forms it, one more such product per layer."""
    R, B = spec.replicates, spec.batch
    P = math.prod(spec.spatial)  # 1 without space
    extra = 0.0 if spec.architecture.weight_grad_is_outer_product else 1.0
    flops = rand = 0.0
    for l, shape in enumerate(spec.weight_shapes):
        mm = 2.0 * B * P * math.prod(shape)
        flops += R * (mm + (mm if l > 0 else 0.0) + extra * mm)
        rand += R * (math.prod(shape) + (shape[0] if spec.bias_std > 0 else 0))
    rand += R * B * P * (spec.widths[0] + spec.widths[-1])
    return flops, rand


class PeakRSS:
    """Samples the resident set size in a thread; `.peak` is the growth over the start (bytes)."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakRSS:
        self.base = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss() - self.base)
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss() - self.base)


def peak_memory(spec: Spec) -> int:
    """Peak bytes of one harness run from an empty `harness.sim.workspace` (a first run in a fresh
    process): the CUDA allocator's peak, or on the CPU the larger of the sampled RSS growth and
    the bytes of the run's workspace."""
    workspace.release()
    if spec.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        measure(spec, progress=False)
        return int(torch.cuda.max_memory_allocated())
    if not Path("/proc/self/statm").exists():
        return -1
    with PeakRSS() as p:
        measure(spec, progress=False)
    # the allocator may hand back memory freed earlier without the RSS growing; the run's own
    # buffers (weights, saved activations, δ) are what its workspace now holds
    return max(p.peak, workspace.current().nbytes())


# ---- the benchmark ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    flops: float
    rng: float


def bench_config(spec: Spec, probe: LimitProbe, repeat: int, naive: bool = True,
                 min_time: float = 0.0) -> dict[str, object]:
    """One row of the table: times, speedup, roofline fraction (from the limits probed between
    the harness's timings), peak memory."""
    probe.reset()  # the limits are probed after each timed run: the same window as the harness
    t_harness = best_time(lambda: measure(spec, progress=False), spec.device, repeat, min_time,
                          between=probe.sample)
    t_naive = best_time(lambda: naive_measure(spec), spec.device, 1) if naive else math.nan
    flops, rand = workload(spec)
    limits = probe.limits
    return {
        "arch": spec.arch, "depth": spec.depth, "width": spec.width, "batch": spec.batch,
        "replicates": spec.replicates, "norm": norm_label(spec), "act": spec.act, "scheme": spec.scheme,
        "device": spec.device, "dtype": spec.dtype,
        "harness_s": t_harness, "naive_s": t_naive,
        "speedup": t_naive / t_harness, **roofline(flops, rand, t_harness, limits),
        "peak_flops": limits.flops, "rng_rate": limits.rng,
        "gflop": flops / 1e9, "mrand": rand / 1e6,
        "peak_mb": peak_memory(spec) / 2**20,
    }


def norm_label(spec: Spec) -> str:
    """"none", or the norm and its position ("layernorm/pre")."""
    return spec.norm if spec.normalization.identity else f"{spec.norm}/{spec.norm_position}"


def roofline(flops: float, rand: float, t_harness: float, limits: Limits) -> dict[str, float]:
    """t_roof = FLOPs / peak + random numbers / rate, and the fraction t_roof / t_harness."""
    t_roof = flops / limits.flops + rand / limits.rng
    return {"roofline_s": t_roof, "roofline_frac": t_roof / t_harness}


def format_table(df: pd.DataFrame) -> str:
    cols = ["arch", "norm", "depth", "width", "batch", "replicates", "harness_s", "naive_s", "speedup",
            "roofline_s", "roofline_frac", "peak_mb"]
    return df[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}")


def figure(df: pd.DataFrame):
    """Speedup over the naive loop and fraction of the roofline, per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.arch} L{r.depth} n{r.width}\nB{r.batch} R{r.replicates}" for r in df.itertuples()]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(df)), 4), constrained_layout=True)
    axes[0].bar(labels, df["speedup"], color="C0")
    axes[0].axhline(1, color="k", lw=0.8)
    axes[0].set_yscale("log")
    axes[0].set_title("speedup over the naive loop (×)")
    axes[1].bar(labels, df["roofline_frac"], color="C1")
    axes[1].axhline(1, color="k", lw=0.8)
    axes[1].set_title("fraction of the roofline reached")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"harness benchmark on {df['device'].iloc[0]} ({df['dtype'].iloc[0]})", fontsize=9)
    return fig


# ---- the whole run and start-up ---------------------------------------------------------------
def load_average() -> float:
    """The 1-minute load average (nan where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return math.nan


def whole_run(overrides: list[str], repeat: int = 3, naive: bool = True) -> dict[str, object]:
    """One configuration as `python -m harness.run` runs it, in-process, beside `measure` and
    the naive loop: each of `repeat` rounds times measure(spec), then the whole run
    (api.compute + api.write into a scratch folder, its figure included), then the naive loop;
    the best of each is kept (after one untimed round). beyond_s is the least over rounds of the
    whole run's time less its own measurement's; theory_s (compute less measure), write_s
    (files and figure) and figure_s (the figure alone: build + savefig) are the parts."""
    cfg = compose_config([*overrides, "progress=false"])
    spec = Spec.from_config(cfg)
    best = dict.fromkeys(("measure_s", "whole_s", "beyond_s", "theory_s", "write_s", "figure_s",
                          "naive_s"), math.inf)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat + 1):
            t = time.perf_counter()
            measure(spec, progress=False)
            t_measure = time.perf_counter() - t
            t = time.perf_counter()
            result = api.compute(cfg, spec)
            t_compute = time.perf_counter() - t
            api.write(result, tmp)
            t_whole = time.perf_counter() - t
            t = time.perf_counter()
            fig = result.plot()
            fig.savefig(io.BytesIO(), format="png", dpi=120)
            t_figure = time.perf_counter() - t
            plots.plt.close(fig)
            t_naive = math.nan
            if naive:
                t = time.perf_counter()
                naive_measure(spec)
                t_naive = time.perf_counter() - t
            if i == 0:
                continue  # warm-up
            m = result.measurement.wall_s
            for key, v in (("measure_s", t_measure), ("whole_s", t_whole), ("beyond_s", t_whole - m),
                           ("theory_s", t_compute - m), ("write_s", t_whole - t_compute),
                           ("figure_s", t_figure), ("naive_s", t_naive)):
                best[key] = min(best[key], v)
    return {"config": " ".join(overrides), "device": spec.device, **best,
            "naive_over_whole": best["naive_s"] / best["whole_s"],
            "naive_over_measure": best["naive_s"] / best["measure_s"], "load": load_average()}


def startup(repeat: int = 3, commands: list[tuple[str, list[str]]] | None = None) -> pd.DataFrame:
    """Wall time of fresh interpreters (`sys.executable` with each command's arguments), the
    commands interleaved `repeat` times, best of each; gap_s is the time over the first
    command's (`import torch` by default). A failing command raises RuntimeError."""
    commands = STARTUP if commands is None else commands
    best = {label: math.inf for label, _ in commands}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat):
            for label, args in commands:
                argv = [sys.executable, *(a.format(out=tmp) for a in args)]
                t = time.perf_counter()
                done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp)
                dt = time.perf_counter() - t
                if done.returncode != 0:
                    raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()[-500:]}")
                best[label] = min(best[label], dt)
    base = best[commands[0][0]]
    return pd.DataFrame({"command": list(best), "wall_s": list(best.values()),
                         "gap_s": [v - base for v in best.values()], "load": load_average()})


def format_whole(row: dict[str, object]) -> str:
    """The whole-run table, one line per step."""
    lines = [f"whole run ({row['config']}; {row['device']}; load {row['load']:.2f}):",
             "  step                      s      ",
             f"  measure alone          {row['measure_s']:7.3f}",
             f"  whole run              {row['whole_s']:7.3f}   (compute + write)",
             f"    beyond measure       {row['beyond_s']:7.3f}   (target ≤ 0.25)",
             f"    theory and frame     {row['theory_s']:7.3f}",
             f"    files and figure     {row['write_s']:7.3f}",
             f"    figure alone         {row['figure_s']:7.3f}",
             f"  naive loop             {row['naive_s']:7.3f}",
             f"  naive / whole run      {row['naive_over_whole']:7.1f}×  (target ≥ 5×)",
             f"  naive / measure        {row['naive_over_measure']:7.1f}×"]
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[Spec]]:
    """The command line, checked, and the Specs of its grid; a bad one exits 2 with one line
    (`harness.cli.ArgumentParser`): --repeat an integer in [1, 50], --min-time a finite number
    ≥ 0, --device/--dtype as the config keys take them, --out not a file."""
    ap = ArgumentParser(prog="python -m harness.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--dtype", default="float32", help="float32 | float64")
    ap.add_argument("--quick", action="store_true", help="a two-point grid (for smoke tests)")
    ap.add_argument("--repeat", type=int, default=5,
                    help="at least this many timings per harness configuration (the best counts)")
    ap.add_argument("--min-time", type=float, default=None,
                    help="and more, up to 50, until this many seconds are spent timing it "
                         "(default 3; 0 with --quick)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive loop")
    ap.add_argument("--no-grid", action="store_true", help="skip the grid of configurations")
    ap.add_argument("--no-whole-run", action="store_true", help="skip the whole-run table")
    ap.add_argument("--startup", type=int, default=None, metavar="N",
                    help="time start-up N times (default 3; 0 skips it, as --quick does)")
    ap.add_argument("--out", default=None, help="output folder (default results/bench/<time>)")
    args = ap.parse_args(argv)
    if not 1 <= args.repeat <= MAX_REPEAT:
        ap.error(f"--repeat must be an integer in [1, {MAX_REPEAT}]; got {args.repeat}")
    if args.min_time is not None and not (math.isfinite(args.min_time) and args.min_time >= 0):
        ap.error(f"--min-time must be a finite number ≥ 0 (seconds); got {args.min_time}")
    if args.out is not None:
        ap.check_out(args.out, folder=True)
    for key, allowed in (("device", DEVICES), ("dtype", tuple(DTYPES))):  # before they become overrides
        value = getattr(args, key)
        if value not in allowed:
            print(f"error: unknown {key} {value!r}; allowed: {', '.join(allowed)}", file=sys.stderr)
            raise SystemExit(2)
    grid = QUICK_GRID if args.quick else DEFAULT_GRID
    if args.min_time is None:
        args.min_time = 0.0 if args.quick else 3.0
    try:
        specs = [
            Spec.from_config(compose_config([
                f"arch={a}", f"depth={d}", f"width={w}", f"batch={b}", f"replicates={r}",
                *ARCH_KEYS.get(a, []), *(extra[0] if extra else ()),
                f"device={args.device}", f"dtype={args.dtype}", "act=relu", "scheme=kaiming",
            ]))
            for a, d, w, b, r, *extra in grid
        ]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return args, specs


def main(argv: list[str] | None = None) -> None:
    args, specs = parse(argv)
    out = Path(args.out or Path("results") / "bench" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    out.mkdir(parents=True, exist_ok=True)
    device, dtype = specs[0].device, specs[0].torch_dtype
    written = []
    if not args.no_grid:
        print(f"machine: {torch.get_num_threads()} threads on {device} ({args.dtype}); the limits "
              f"are probed between the harness's timings of each configuration")
        probe = LimitProbe(device, dtype)
        rows = []
        for spec in specs:
            r = bench_config(spec, probe, args.repeat, naive=not args.no_naive,
                             min_time=args.min_time)
            rows.append(r)
            print(f"  {r['arch']:>7} {r['norm']:>14} depth {r['depth']:>3} width {r['width']:>4} "
                  f"batch {r['batch']:>3} replicates {r['replicates']:>2}: harness "
                  f"{r['harness_s']:.3f} s, naive {r['naive_s']:.3f} s, "
                  f"speedup {r['speedup']:.1f}x, roofline {r['roofline_frac']:.0%} (matmul "
                  f"{r['peak_flops'] / 1e9:.0f} GFLOP/s, RNG {r['rng_rate'] / 1e6:.0f} M/s)",
                  flush=True)
        df = pd.DataFrame(rows).assign(load=load_average())
        print(format_table(df))
        print(f"load average {df['load'].iloc[0]:.2f}")
        write_parquet(df, out / "bench.parquet", {"argv": sys.argv})
        fig = figure(df)
        fig.savefig(out / "bench.png", dpi=110)
        written += [out / "bench.parquet", out / "bench.png"]
    if not args.no_whole_run:
        overrides = [*(WHOLE_RUN_QUICK if args.quick else WHOLE_RUN), f"device={args.device}",
                     f"dtype={args.dtype}"]
        row = whole_run(overrides, repeat=1 if args.quick else 3, naive=not args.no_naive)
        print(format_whole(row), flush=True)
        write_parquet(pd.DataFrame([row]), out / "whole_run.parquet", {"argv": sys.argv})
        written.append(out / "whole_run.parquet")
    n_startup = (0 if args.quick else 3) if args.startup is None else args.startup
    if n_startup > 0:
        st = startup(n_startup)
        print(f"start-up (fresh interpreters, best of {n_startup}; load {st['load'].iloc[0]:.2f}; "
              "target: trivial run ≤ import torch + 1.5 s):")
        print(st.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        write_parquet(st, out / "startup.parquet", {"argv": sys.argv})
        written.append(out / "startup.parquet")
    print("written: " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
