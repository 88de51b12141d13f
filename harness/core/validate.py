"""`ConfigError` and the small validators every part of a config goes through.

A leaf module (it imports nothing of the harness), so that `harness.core.spec` and the
architecture entries (`harness.archs`), which `Spec` asks for their own keys, share one error type
without importing each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """A config value is wrong; the message is one line: what, and what is allowed."""


def is_int(v: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float that is not a bool."""
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def integer(cfg: Mapping[str, Any], key: str, *, minimum: int, default: int | None = None) -> int:
    """cfg[key] (or `default`) as an integer ≥ minimum; ConfigError otherwise."""
    v = cfg.get(key, default)
    if not is_int(v) or v < minimum:
        raise ConfigError(f"{key} must be an integer ≥ {minimum}; got {v!r}")
    return int(v)


def number(
    cfg: Mapping[str, Any], key: str, *, minimum: float, default: float, strict: bool = False
) -> float:
    """cfg[key] (or `default`) as a finite float ≥ minimum (> minimum if strict)."""
    v = cfg.get(key, default)
    ok = is_number(v) and (v > minimum if strict else v >= minimum)
    if not ok:
        bound = f"> {minimum:g}" if strict else f"≥ {minimum:g}"
        raise ConfigError(f"{key} must be a finite number {bound}; got {v!r}")
    return float(v)


def choice(cfg: Mapping[str, Any], key: str, allowed: tuple[str, ...], *, default: str) -> str:
    """cfg[key] (or `default`), one of `allowed`."""
    v = cfg.get(key, default)
    if v not in allowed:
        raise ConfigError(f"unknown {key} {v!r}; allowed: {', '.join(allowed)}")
    return str(v)
