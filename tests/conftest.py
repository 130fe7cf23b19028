"""Shared fixtures of the self2seg_jax test-suite.

Everything here is deliberately small (16x16 .. 64x64 images, 8-channel 2-layer CNNs, a few
dozen Adam steps) so that the whole suite runs in a few minutes on a 2-core CPU. Tests that
run the full compiled scheme with CNN experts share ONE static configuration
(:data:`TINY_N2F`) and one image shape (32x32), so each pytest worker compiles it once.
"""

from __future__ import annotations

import os
import tempfile

import jax
import numpy as np
import pytest

from self2seg_jax import Self2SegConfig

# The CLI turns on JAX's persistent compilation cache; keep it out of the user's cache folder and
# fresh for every test session (tests that check "this run compiled" need a cold cache).
os.environ.setdefault("SELF2SEG_CACHE_DIR", tempfile.mkdtemp(prefix="self2seg-test-cache-"))

# One static configuration for every CNN-expert end-to-end test (compiled once per worker).
TINY_N2F = Self2SegConfig(
    lam=0.02,
    mu=0.0,
    bg_expert="n2f",
    net_width=8,
    net_depth=2,
    train_max_steps=40,
    train_min_steps=20,
    train_patience=20,
    val_every=10,
    n_average=2,
    init_denoise=False,
    max_outer=3,
)

# Constant experts (= convex Chan-Vese): cheap to compile, used by the API validation tests.
TINY_CONST = Self2SegConfig(
    lam=0.05,
    mu=0.0,
    fg_expert="constant",
    bg_expert="constant",
    init_denoise=False,
    max_outer=4,
)


def blob_image(seed: int = 0, size: int = 32, noise: float = 0.1):
    """A noisy bright disc on a darker background: ``(image float32, gt bool)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c = size / 2
    gt = (yy - c) ** 2 + (xx - c + 1) ** 2 < (size / 4) ** 2
    img = 0.3 + 0.4 * gt + noise * rng.standard_normal((size, size))
    return img.astype(np.float32), gt


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def x64():
    """Enable float64 for the duration of one test (create arrays as float64 explicitly)."""
    prev = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", prev)


@pytest.fixture(scope="session")
def tiny_n2f_config():
    return TINY_N2F


@pytest.fixture(scope="session")
def blob32():
    return blob_image(0, 32, 0.1)


@pytest.fixture(scope="session")
def tiny_n2f_result(blob32):
    """One Self2Seg run with CNN experts on the 32x32 blob (shared by several tests)."""
    import self2seg_jax as s2s

    img, _ = blob32
    return s2s.segment(jax.random.key(0), img, config=TINY_N2F)


@pytest.fixture(scope="session")
def make_blob():
    """The :func:`blob_image` factory (test modules cannot import conftest under importlib mode)."""
    return blob_image


@pytest.fixture(scope="session")
def const_config():
    return TINY_CONST


def run_on_forced_cpu_devices(code: str, cwd, n: int = 4, timeout: int = 900) -> None:
    """Run the Python ``code`` in a subprocess that sees ``n`` forced CPU devices; it must exit
    0 and print ``OK`` last (its stderr tail is the failure message)."""
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
               JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=cwd)
    assert p.returncode == 0 and p.stdout.strip().endswith("OK"), p.stderr[-3000:]
