"""`python -m harness.bench`: the batched runner against the naive loop and the machine's limits.

For each configuration of a grid it measures, in one process on one machine:

- the harness runner (`harness.runner.measure`), best of `--repeat` timings;
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
memory of the harness run (CUDA: max_memory_allocated; CPU: peak resident-set growth, sampled).
The table is printed and written (with a figure) to `--out` (default results/bench/<time>/).
"""

from __future__ import annotations

import math
import os
import sys
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

from .cli import ArgumentParser, compose_config
from .init import scheme as scheme_entry
from .runner import measure
from .spec import ConfigError, Spec

#: (arch, depth, width, batch, replicates) of the default grid; conv: 3×3, 16×16 images
DEFAULT_GRID = [
    ("mlp", 50, 64, 64, 64),
    ("mlp", 20, 64, 128, 64),
    ("mlp", 20, 256, 128, 16),
    ("mlp", 50, 256, 256, 8),
    ("mlp", 100, 256, 256, 8),
    ("mlp", 20, 1024, 256, 8),
    ("conv", 20, 16, 32, 16),
    ("conv", 20, 64, 32, 8),
]
QUICK_GRID = [("mlp", 10, 32, 16, 8), ("mlp", 5, 128, 32, 4), ("conv", 3, 8, 4, 2)]
CONV_KEYS = ["kernel=3", "image=16"]


# ---- the naive baseline -----------------------------------------------------------------------
def _torch_init(spec: Spec) -> Callable[[torch.Tensor, torch.Generator], None]:
    """The torch.nn.init call a researcher would write for this scheme, for one weight."""
    entry = scheme_entry(spec.scheme)
    I = nn.init
    if entry.family == "torch_default":
        return lambda w, g: I.kaiming_uniform_(w, a=math.sqrt(5), generator=g)
    if entry.family == "kaiming":
        fn = I.kaiming_uniform_ if entry.distribution == "uniform" else I.kaiming_normal_
        # the gain is applied through calculate_gain(nonlinearity, a) exactly as the harness does
        nl, a = spec.nonlinearity or "leaky_relu", spec.a or 0.0
        if I.calculate_gain(nl, a) == spec.gain:
            return lambda w, g: fn(w, a=a, mode=spec.mode, nonlinearity=nl, generator=g)
        # an explicit gain: kaiming has none in torch; linear nonlinearity + scale
        return lambda w, g: fn(w, mode=spec.mode, nonlinearity="linear", generator=g).mul_(spec.gain)
    if entry.family == "xavier":
        fn = I.xavier_uniform_ if entry.distribution == "uniform" else I.xavier_normal_
        return lambda w, g: fn(w, gain=spec.gain, generator=g)
    if entry.family == "orthogonal":
        return lambda w, g: I.orthogonal_(w, gain=spec.gain, generator=g)
    # no torch.nn.init function (Keras/JAX presets, meanfield, trunc_normal, ...): the same
    # distribution drawn for this one weight
    from .init import init_

    return lambda w, g: init_(w.unsqueeze(0), spec.scheme, generator=g, **spec.init_kwargs())


class _Phi(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def naive_networks(spec: Spec, generator: torch.Generator) -> list[nn.Sequential]:
    """One nn.Sequential of nn.Linear or nn.Conv{1,2}d (+ activation) per replicate, initialized
    by torch.nn.init."""
    init = _torch_init(spec)
    act = spec.activation
    nets = []
    for _ in range(spec.replicates):
        layers: list[nn.Module] = []
        for l, (n_out, n_in, *k) in enumerate(spec.weight_shapes):
            if spec.is_conv:
                conv = nn.Conv1d if spec.conv_dim == 1 else nn.Conv2d
                lin = conv(n_in, n_out, k[0], padding=(k[0] - 1) // 2, padding_mode=spec.padding_mode,
                           bias=spec.bias_std > 0, device=spec.device, dtype=spec.torch_dtype)
            else:
                lin = nn.Linear(n_in, n_out, bias=spec.bias_std > 0, device=spec.device,
                                dtype=spec.torch_dtype)
            with torch.no_grad():
                init(lin.weight, generator)
                if lin.bias is not None:
                    lin.bias.normal_(0.0, spec.bias_std, generator=generator)
            layers.append(lin)
            if l < spec.depth - 1:
                layers.append(_Phi(act.phi))
        nets.append(nn.Sequential(*layers))
    return nets


def _naive_one(net: nn.Sequential, spec: Spec, x0: torch.Tensor, cot: torch.Tensor) -> dict[str, list]:
    """Hooks on one network: per layer mean h², mean φ(h)², mean δ², weight-gradient moment."""
    L = spec.depth
    rec: dict[str, list] = {k: [0.0] * L for k in ("forward", "activation", "backward", "weight_grad")}
    x_sq: dict[int, torch.Tensor] = {}
    d_sq: dict[int, torch.Tensor] = {}

    def fwd_hook(l: int):
        def fwd(module, inputs, h):
            rec["forward"][l] = h.detach().square().mean().item()
            if not spec.is_conv:
                x_sq[l] = inputs[0].detach().square().mean(-1)
            if l < L - 1:
                rec["activation"][l] = spec.activation.phi(h.detach()).square().mean().item()

            def bwd(grad):
                rec["backward"][l] = grad.square().mean().item()
                if not spec.is_conv:
                    d_sq[l] = grad.square().mean(-1)

            h.register_hook(bwd)

        return fwd

    linears = [m for m in net if not isinstance(m, _Phi)]
    handles = [lin.register_forward_hook(fwd_hook(l)) for l, lin in enumerate(linears)]
    (net(x0) * cot).sum().backward()
    for h in handles:
        h.remove()
    if spec.is_conv:
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


def best_time(fn: Callable[[], object], device: str, repeat: int = 3) -> float:
    """Best wall time of `repeat` calls (after one warm-up call)."""
    fn()
    _sync(device)
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak(device: str, dtype: torch.dtype, n: int = 2048) -> float:
    """Measured FLOP/s of an n×n by n×n matmul (2n³ FLOPs)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / best_time(lambda: a @ b, device)


def rng_rate(device: str, dtype: torch.dtype, n: int = 1 << 24) -> float:
    """Measured normal random numbers per second drawn into one tensor from one generator."""
    g = torch.Generator(device=device).manual_seed(0)
    t = torch.empty(n, device=device, dtype=dtype)
    return n / best_time(lambda: t.normal_(generator=g), device)


def workload(spec: Spec) -> tuple[float, float]:
    """(FLOPs, random numbers) the harness must spend on `spec` (see the module docstring).

    A conv layer's matmul is 2·B·C_in·∏k·C_out·P (P positions); the conv runner also forms the
    per-example weight gradient, one more such product per layer."""
    R, B = spec.replicates, spec.batch
    P = math.prod(spec.spatial) if spec.is_conv else 1
    flops = rand = 0.0
    for l, shape in enumerate(spec.weight_shapes):
        mm = 2.0 * B * P * math.prod(shape)
        flops += R * (mm + (mm if l > 0 else 0.0) + (mm if spec.is_conv else 0.0))
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
    """Peak bytes of one harness run (CUDA allocator peak, or sampled RSS growth on the CPU)."""
    if spec.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        measure(spec, progress=False)
        return int(torch.cuda.max_memory_allocated())
    if not Path("/proc/self/statm").exists():
        return -1
    with PeakRSS() as p:
        measure(spec, progress=False)
    return p.peak


# ---- the benchmark ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    flops: float
    rng: float


def bench_config(spec: Spec, limits: Limits, repeat: int, naive: bool = True) -> dict[str, object]:
    """One row of the table: times, speedup, roofline fraction, peak memory."""
    t_harness = best_time(lambda: measure(spec, progress=False), spec.device, repeat)
    t_naive = best_time(lambda: naive_measure(spec), spec.device, 1) if naive else math.nan
    flops, rand = workload(spec)
    t_roof = flops / limits.flops + rand / limits.rng
    return {
        "arch": spec.arch, "depth": spec.depth, "width": spec.width, "batch": spec.batch,
        "replicates": spec.replicates, "act": spec.act, "scheme": spec.scheme,
        "device": spec.device, "dtype": spec.dtype,
        "harness_s": t_harness, "naive_s": t_naive, "roofline_s": t_roof,
        "speedup": t_naive / t_harness, "roofline_frac": t_roof / t_harness,
        "gflop": flops / 1e9, "mrand": rand / 1e6,
        "peak_mb": peak_memory(spec) / 2**20,
    }


def format_table(df: pd.DataFrame) -> str:
    cols = ["arch", "depth", "width", "batch", "replicates", "harness_s", "naive_s", "speedup",
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


def main(argv: list[str] | None = None) -> None:
    ap = ArgumentParser(prog="python -m harness.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--dtype", default="float32", help="float32 | float64")
    ap.add_argument("--quick", action="store_true", help="a two-point grid (for smoke tests)")
    ap.add_argument("--repeat", type=int, default=2, help="timings per harness configuration")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive loop")
    ap.add_argument("--out", default=None, help="output folder (default results/bench/<time>)")
    args = ap.parse_args(argv)

    grid = QUICK_GRID if args.quick else DEFAULT_GRID
    try:
        specs = [
            Spec.from_config(compose_config([
                f"arch={a}", f"depth={d}", f"width={w}", f"batch={b}", f"replicates={r}",
                *(CONV_KEYS if a == "conv" else []),
                f"device={args.device}", f"dtype={args.dtype}", "act=relu", "scheme=kaiming",
            ]))
            for a, d, w, b, r in grid
        ]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    device, dtype = specs[0].device, specs[0].torch_dtype
    limits = Limits(matmul_peak(device, dtype), rng_rate(device, dtype))
    print(f"machine: {torch.get_num_threads()} threads on {device}; matmul "
          f"{limits.flops / 1e9:.1f} GFLOP/s, normal RNG {limits.rng / 1e6:.0f} M/s ({args.dtype})")
    rows = []
    for spec in specs:
        rows.append(bench_config(spec, limits, args.repeat, naive=not args.no_naive))
        r = rows[-1]
        print(f"  depth {r['depth']:>3} width {r['width']:>4} batch {r['batch']:>3} replicates "
              f"{r['replicates']:>2}: harness {r['harness_s']:.3f} s, naive {r['naive_s']:.3f} s, "
              f"speedup {r['speedup']:.1f}x, roofline {r['roofline_frac']:.0%}", flush=True)
    df = pd.DataFrame(rows).assign(peak_flops=limits.flops, rng_rate=limits.rng)
    print(format_table(df))
    out = Path(args.out or Path("results") / "bench" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    out.mkdir(parents=True, exist_ok=True)
    from .results import write_parquet

    write_parquet(df, out / "bench.parquet", {"argv": sys.argv})
    fig = figure(df)
    fig.savefig(out / "bench.png", dpi=110)
    print(f"written: {out / 'bench.parquet'}, {out / 'bench.png'}")


if __name__ == "__main__":
    main()
