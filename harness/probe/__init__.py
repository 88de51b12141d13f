"""Probe any model: per-module forward and gradient statistics of an ensemble of any nn.Module at
initialization (torchvision, timm, Hugging Face or your own), under its own init or a harness
scheme. `python -m harness.probe model=NAME …` (harness/probe/__main__.py) and, in a notebook:

    >>> import harness
    >>> r = harness.probe("resnet18", input_shape=[3, 64, 64], replicates=4)   # a preset
    >>> r = harness.probe(MyNet, "scheme=kaiming", input_shape=[10])         # a factory
    >>> r.frame, r.verdict(), r.plot(), r.save("out")

`harness.probe(model_or_factory, *overrides, **kwargs)` returns a `harness.Result` (its subclass
`ProbeResult`: the same frame contract, verdict, plot, metadata and save as `harness.run`'s) with
no theory. docs/probe.md describes what is measured, the presets, the selection of modules, the
batched path and the errors.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from harness.probe.command import main
from harness.probe.result import FIGURE, ProbeResult, compute, probe, write

__all__ = ["FIGURE", "ProbeResult", "compute", "main", "probe", "write"]


class _CallableModule(types.ModuleType):
    """`harness.probe` is this package (`python -m harness.probe`) and, called, the API:
    `harness.probe("resnet18", input_shape=[3, 64, 64])` is `harness.probe.probe(...)`."""

    def __call__(self, *args: Any, **kwargs: Any) -> ProbeResult:
        return probe(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
