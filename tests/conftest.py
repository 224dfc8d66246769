"""Test configuration (STYLE.md §14): JAX is configured here, never at import time of the library.

- 4 virtual CPU devices, so sharding is exercised on any machine, and XLA's backend at -O0 (set before JAX is
  imported);
- float64 on; a persistent compilation cache only when ``TWINJAX_TEST_CACHE`` names a folder;
- a PRNG-key fixture; warnings are errors (pyproject's filterwarnings);
- the ``strict`` marker runs a test under strict dtype promotion and rank-promotion errors (twinjax-only code: numpyro
  and blackjax samplers raise under strict promotion, so it is opt-in per test).
"""

import os
import pathlib

# LLVM at -O0: test workloads are compile-dominated, and it cut their CPU time by 20–22 % (measured on two sets of test
# files). IEEE semantics are kept (no fast math), but the last bits of results may differ from -O2 (other instruction
# selection), so a test must not depend on them: the chaotic quick CycleGAN of test_sim2real.py does, and is slow
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
# The persistent compilation cache is opt-in (TWINJAX_TEST_CACHE=folder, one subfolder per xdist worker: JAX writes
# entries in place, not atomically). Off by default: a fresh CI clone gains nothing from it, and two of the worker
# crashes CI saw were segmentation faults inside its compile-and-write path.
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
