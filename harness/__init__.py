"""The harness: measured and predicted per-layer variance of deep networks at initialization.

    >>> from harness import Spec, measure, predict
    >>> from harness.cli import compose_config
    >>> spec = Spec.from_config(compose_config(["act=tanh", "depth=5", "replicates=2"]))
    >>> m, th = measure(spec, progress=False), predict(spec)
"""

from harness.core.activations import get as activation
from harness.core.init import calculate_gain, init_
from harness.core.spec import ConfigError, Spec
from harness.outputs.results import load
from harness.sim.runner import measure
from harness.theory.meanfield import predict

__all__ = [
    "ConfigError",
    "Spec",
    "activation",
    "calculate_gain",
    "init_",
    "load",
    "measure",
    "predict",
]
