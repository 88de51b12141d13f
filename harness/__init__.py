"""The harness: measured and predicted per-layer variance of deep networks at initialization.

    >>> from harness import Spec, measure, predict
    >>> from harness.cli import compose_config
    >>> spec = Spec.from_config(compose_config(["act=tanh", "depth=5", "replicates=2"]))
    >>> m, th = measure(spec, progress=False), predict(spec)

In a notebook (`harness.api`, loaded on first use so that `import harness` stays light):

    >>> r = harness.run("act=tanh", depth=20, width=128)        # r.frame, r.verdict(), r.plot()
    >>> s = harness.sweep({"act": ["relu", "tanh"]}, depth=10)   # s.frame, s.runs, s.table()
    >>> p = harness.probe("resnet18", input_shape=[3, 64, 64])  # any nn.Module (harness.probe)
"""

import sys

from harness.core.activations import get as activation
from harness.core.init import calculate_gain, init_
from harness.core.spec import ConfigError, Spec
from harness.outputs.results import load
from harness.sim.runner import measure
from harness.theory.meanfield import predict

#: names served lazily from harness.api (it imports Hydra, matplotlib and the report code)
_API = ("Result", "SweepResult", "run", "sweep")

__all__ = [
    "ConfigError",
    "Result",
    "SweepResult",
    "Spec",
    "activation",
    "calculate_gain",
    "init_",
    "load",
    "measure",
    "predict",
    "probe",
    "run",
    "sweep",
]


def __getattr__(name: str) -> object:
    """harness.run / harness.sweep / harness.Result / harness.SweepResult from harness.api;
    harness.probe, the probe package, which is callable (`harness.probe(model, ...)`).

    Once `harness.run` the module is imported (`python -m harness.run`, `import harness.run`),
    the package attribute `run` is that module; it is callable and does the same (harness/run.py).
    """
    if name in _API:
        from harness import api  # lazy on purpose (light `import harness`), not a cycle

        return getattr(api, name)
    if name == "probe":
        import harness.probe  # noqa: F401  lazy on purpose (torch.func, its configs), not a cycle

        return sys.modules["harness.probe"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
