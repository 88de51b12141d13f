"""The per-process theory cache that a sweep's jobs share (harness.theory.nlo's two-input
expectations): a job answered from the cache has bitwise the numbers of one computed afresh."""

from __future__ import annotations

import numpy as np

from harness import api
from harness.cli import compose_config
from harness.core.activations import get as get_activation
from harness.theory import nlo
from harness.theory.meanfield import predict
from tests.conftest import small_spec

SMALL = ["depth=3", "width=16", "batch=4", "replicates=2", "progress=false"]


def test_cached_pair_moments_equal_the_uncached_call():
    """Every (φ, q, c) the cache holds after a run is exactly `pair_moments` computed now."""
    spec = small_spec("act=gelu", *SMALL)
    nlo._shared_pair_moments.cache_clear()
    nlo.log_variance(spec, predict(spec))
    info = nlo._shared_pair_moments.cache_info()
    assert info.misses == spec.depth  # one (q^l, c^l) per layer, none before
    act = get_activation("gelu")
    ch = nlo.chain(spec, predict(spec)["forward"])
    c = predict(spec)["correlation"]
    for q, cl in zip(ch.q, c, strict=True):
        q, cl = float(q), float(min(1.0, max(-1.0, cl)))
        assert nlo._shared_pair_moments("gelu", (), q, cl) == nlo.pair_moments(act, q, cl)


def test_a_job_served_from_the_cache_is_bitwise_a_fresh_one():
    """Two jobs of a sweep that differ only in seed: the second one's 1/n theory comes from the
    cache (hits, no new misses) and its whole frame equals the same job computed with the cache
    emptied first, bitwise (DataFrame.equals: same values, NaN in the same places)."""
    first, second = (compose_config(["act=tanh", f"seed={s}", *SMALL]) for s in (0, 1))
    nlo._shared_pair_moments.cache_clear()
    api.compute(first)
    misses = nlo._shared_pair_moments.cache_info().misses
    warm = api.compute(second)
    info = nlo._shared_pair_moments.cache_info()
    assert info.misses == misses and info.hits >= misses > 0
    nlo._shared_pair_moments.cache_clear()
    fresh = api.compute(second)
    assert nlo._shared_pair_moments.cache_info().misses == misses
    assert warm.frame.equals(fresh.frame)
    assert np.isfinite(warm.frame["theory_log_var"]).any()  # the cached values are used
