"""`ConfigError` and the small validators every part of a config goes through.

A leaf module (it imports nothing of the harness), so that `harness.core.spec` and the
architecture entries (`harness.archs`), which `Spec` asks for their own keys, share one error type
without importing each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: the largest integer any integer key may take: integers are stored in int64 columns and seed
#: torch's and numpy's generators, so every integer key is < 2⁶³
INT_MAX = 2**63 - 1
#: the deepest network: the Spec holds one width per layer and the theory one value per layer
#: and quantity, as Python sequences, so depth is at most 2²⁰ (≈ 10⁶ layers, 100× the deepest
#: networks studied at initialization) and those stay a few MB
DEPTH_MAX = 2**20
#: a variance (input_var, scheme.sigma_w2, scheme.sigma_b2, variance_scaling's scale, lsuv's tol)
#: must be < 2⁶⁴, so that its square (the fourth moments behind every standard error) fits
#: float32, whose largest value is just under 2¹²⁸; the narrowest dtype sets the bound for both
VARIANCE_MAX = 2.0**64
#: a standard deviation or a factor multiplying one (bias_std, scheme.gain, scheme.a, trunc_normal's
#: mean/std/a/b, the activations' parameters) must be < 2³², so that its square is a variance
#: < VARIANCE_MAX. Larger values overflow as the network propagates: that overflow is carried as
#: inf/nan and named by layer in the verdict, never raised.
SCALE_MAX = 2.0**32


class ConfigError(ValueError):
    """A config value is wrong; the message is one line: what, and what is allowed."""


def is_int(v: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float that is not a bool."""
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _short(v: Any) -> str:
    """repr(v), cut to 60 characters so that a huge value still makes a one-line message."""
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def check_integer(key: str, v: Any, *, minimum: int, maximum: int = INT_MAX) -> int:
    """v as an int with minimum ≤ v ≤ maximum; ConfigError (naming `key`) otherwise."""
    if not is_int(v) or v < minimum:
        raise ConfigError(f"{key} must be an integer ≥ {minimum}; got {_short(v)}")
    if v > maximum:
        top = "< 2^63" if maximum == INT_MAX else f"≤ {maximum}"
        raise ConfigError(f"{key} must be an integer ≥ {minimum} and {top}; got {_short(v)}")
    return int(v)


def check_number(
    key: str, v: Any, *, minimum: float | None = None, maximum: float, strict: bool = False
) -> float:
    """v as a finite float with minimum ≤ v < maximum (minimum < v if strict; |v| < maximum if
    minimum is None); ConfigError (naming `key`) otherwise."""
    low = "" if minimum is None else (f" > {minimum:g}" if strict else f" ≥ {minimum:g}")
    if not is_number(v) or (minimum is not None and (v <= minimum if strict else v < minimum)):
        raise ConfigError(f"{key} must be a finite number{low}; got {_short(v)}")
    if minimum is None and abs(v) >= maximum:
        raise ConfigError(f"{key} must be a finite number with |{key}| < {_g(maximum)}; got {_short(v)}")
    if v >= maximum:
        raise ConfigError(f"{key} must be a finite number{low} and < {_g(maximum)}; got {_short(v)}")
    return float(v)


def _g(x: float) -> str:
    """A bound as text: 2^32, 2^64 for those powers of two, %g otherwise."""
    for k in (32, 43, 63, 64):
        if x == 2.0**k:
            return f"2^{k}"
    return f"{x:g}"


def integer(
    cfg: Mapping[str, Any], key: str, *, minimum: int, default: int | None = None,
    maximum: int = INT_MAX,
) -> int:
    """cfg[key] (or `default`) as an integer in [minimum, maximum]; ConfigError otherwise."""
    return check_integer(key, cfg.get(key, default), minimum=minimum, maximum=maximum)


def number(
    cfg: Mapping[str, Any], key: str, *, minimum: float, default: float, strict: bool = False,
    maximum: float = VARIANCE_MAX,
) -> float:
    """cfg[key] (or `default`) as a finite float in [minimum, maximum) ((minimum, maximum) if
    strict)."""
    return check_number(key, cfg.get(key, default), minimum=minimum, maximum=maximum, strict=strict)


def choice(cfg: Mapping[str, Any], key: str, allowed: tuple[str, ...], *, default: str) -> str:
    """cfg[key] (or `default`), one of `allowed`."""
    v = cfg.get(key, default)
    if not isinstance(v, str) or v not in allowed:
        raise ConfigError(f"unknown {key} {_short(v)}; allowed: {', '.join(allowed)}")
    return str(v)
