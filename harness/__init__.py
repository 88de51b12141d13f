"""The harness: measured and predicted per-layer variance of deep networks at initialization.

    >>> from harness import Spec, measure, predict
    >>> from harness.cli import compose_config
    >>> spec = Spec.from_config(compose_config(["act=tanh", "depth=5", "replicates=2"]))
    >>> m, th = measure(spec, progress=False), predict(spec)
"""

from .activations import get as activation
from .init import calculate_gain, init_
from .results import load
from .runner import measure
from .spec import ConfigError, Spec
from .theory import predict

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
