"""Test configuration (STYLE.md §14): JAX is configured here, never at import time of the library.

- 4 virtual CPU devices, so sharding is exercised on any machine (set before JAX is imported);
- float64 on; a persistent compilation cache only when ``TWINJAX_TEST_CACHE`` names a folder;
- a PRNG-key fixture; JAX's caches cleared after each test module; warnings are errors (pyproject's filterwarnings);
- the ``strict`` marker runs a test under strict dtype promotion and rank-promotion errors (twinjax-only code: numpyro
  and blackjax samplers raise under strict promotion, so it is opt-in per test).
"""

import os
import pathlib

# XLA's backend stays at its default optimisation level: -O0 cut the tests' CPU time by 20–22 %, but it moves the last
# bits of results, and its runs lost as many xdist workers to compiler segfaults as the default level's (or more)
# XLA's concurrency-optimised CPU scheduler can deadlock a large program on a 2-core machine (experiments/perturbseq.py)
os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_cpu_enable_concurrency_optimized_scheduler=false"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
# The persistent compilation cache is opt-in (TWINJAX_TEST_CACHE=folder, one subfolder per xdist worker: JAX writes
# entries in place, not atomically). Off by default: a fresh CI clone gains nothing from it.
if os.environ.get("TWINJAX_TEST_CACHE"):
    _cache = pathlib.Path(os.environ["TWINJAX_TEST_CACHE"]) / os.environ.get("PYTEST_XDIST_WORKER", "main")
    jax.config.update("jax_compilation_cache_dir", str(_cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(autouse=True)
def _strict_mode(request):
    if request.node.get_closest_marker("strict") is None:
        yield
        return
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        yield


@pytest.fixture(autouse=True, scope="module")
def _fresh_caches():
    """Drop JAX's compiled executables after each test module: a worker then holds one module's programs, not the whole
    run's. The CI workers that died (segmentation faults inside XLA's compiler, in tests that pass alone) all died late
    in their lives, after hundreds of compilations; modules rarely share a compiled program."""
    yield
    jax.clear_caches()
