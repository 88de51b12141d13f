"""`python -m harness.bench.memory`: the low-memory path against the stored path.

For each configuration it times the same run twice in one process (best of `--repeat`): on the
stored path (every layer's weights and saved activations kept; a budget that fits one chunk of
all replicates) and on the low-memory path (`harness.sim.memory`: weights regenerated from the
streams a segment of k layers at a time, activations checkpointed every k layers and recomputed;
a budget just below one stored replicate forces it). It reports both times, their ratio, the
bytes per replicate each path budgets and the peak memory of each run
(`harness.bench.peak_memory`), and checks that both gave the same numbers, bitwise.

The low-memory path draws every weight three times (a walk over the streams, the forward pass,
the backward pass) and runs the forward pass twice, so expect it 2–3× slower where drawing and
the matmuls dominate; what it buys is memory that grows like √depth instead of depth.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness.bench import best_time, peak_memory
from harness.cli import ArgumentParser, compose_config
from harness.core.spec import ConfigError, Spec
from harness.outputs.results import write_parquet
from harness.sim import memory
from harness.sim.runner import measure

#: (depth, width, batch, replicates) of MLPs
GRID = [(200, 256, 64, 4), (1000, 256, 64, 2), (20, 2048, 64, 1)]
QUICK_GRID = [(40, 32, 8, 2)]


def specs(depth: int, width: int, batch: int, replicates: int, device: str,
          dtype: str) -> tuple[Spec, Spec]:
    """(stored, low-memory) specs of one configuration: the same run under two budgets."""
    base = [f"depth={depth}", f"width={width}", f"batch={batch}", f"replicates={replicates}",
            f"device={device}", f"dtype={dtype}", "act=tanh", "scheme=kaiming"]
    probe = Spec.from_config(compose_config([*base, "memory_budget_mb=1e9"]))
    stored = probe.architecture.bytes_per_replicate(probe)
    whole = Spec.from_config(compose_config([*base, f"memory_budget_mb={stored * replicates / 2**20}"]))
    low = Spec.from_config(compose_config([*base, f"memory_budget_mb={(stored - 1) / 2**20}"]))
    return whole, low


def row(stored: Spec, low: Spec, repeat: int) -> dict[str, object]:
    """Times, bytes per replicate and peak memory of both paths, and whether they agree."""
    p_stored, p_low = memory.plan(stored), memory.plan(low)
    a = measure(stored, progress=False)
    b = measure(low, progress=False)
    same = all(np.array_equal(a.values[q], b.values[q], equal_nan=True) for q in a.values)
    t_stored = best_time(lambda: measure(stored, progress=False), stored.device, repeat)
    t_low = best_time(lambda: measure(low, progress=False), low.device, repeat)
    return {
        "depth": stored.depth, "width": stored.width, "batch": stored.batch,
        "replicates": stored.replicates, "device": stored.device, "dtype": stored.dtype,
        "segment_k": p_low.segment, "stored_s": t_stored, "low_memory_s": t_low,
        "slowdown": t_low / t_stored,
        "stored_mb_per_replicate": p_stored.bytes / 2**20,
        "low_mb_per_replicate": p_low.bytes / 2**20,
        "stored_peak_mb": peak_memory(stored) / 2**20, "low_peak_mb": peak_memory(low) / 2**20,
        "bitwise_equal": same,
    }


def main(argv: list[str] | None = None) -> None:
    ap = ArgumentParser(prog="python -m harness.bench.memory", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--dtype", default="float32", help="float32 | float64")
    ap.add_argument("--quick", action="store_true", help="one small configuration")
    ap.add_argument("--config", action="append", default=None, metavar="DEPTH,WIDTH,BATCH,R",
                    help="an MLP configuration instead of the grid (repeatable)")
    ap.add_argument("--repeat", type=int, default=3, help="timings per path (the best counts)")
    ap.add_argument("--out", default=None, help="write memory.parquet into this folder")
    args = ap.parse_args(argv)
    grid = QUICK_GRID if args.quick else GRID
    try:
        if args.config:
            grid = [tuple(int(v) for v in c.split(",")) for c in args.config]
            if any(len(c) != 4 for c in grid):
                raise ConfigError(f"--config takes DEPTH,WIDTH,BATCH,REPLICATES; got {args.config}")
        pairs = [specs(*c, args.device, args.dtype) for c in grid]
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"machine: {torch.get_num_threads()} threads on {pairs[0][0].device} ({args.dtype})")
    rows = []
    for stored, low in pairs:
        r = row(stored, low, args.repeat)
        rows.append(r)
        print(f"  depth {r['depth']} width {r['width']} batch {r['batch']} replicates "
              f"{r['replicates']}: stored {r['stored_s']:.3f} s, low-memory {r['low_memory_s']:.3f} s "
              f"(k={r['segment_k']}, {r['slowdown']:.2f}x); {r['stored_mb_per_replicate']:.1f} → "
              f"{r['low_mb_per_replicate']:.1f} MiB per replicate; bitwise equal: "
              f"{r['bitwise_equal']}", flush=True)
    df = pd.DataFrame(rows)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_parquet(df, out / "memory.parquet", {"argv": sys.argv})
        print(f"written: {out / 'memory.parquet'}")
    if not df["bitwise_equal"].all():
        raise SystemExit(1)


if __name__ == "__main__":
    main()
