"""self2seg_jax.backend: the compiler-option policy and the jit wrapper every entry point uses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import self2seg_jax as s2s
from self2seg_jax import backend, experts


def test_policy_rules(monkeypatch):
    supported = backend.ynn_option_supported()
    off = {backend.YNN_OPTION: ""} if supported else {}
    monkeypatch.setenv(backend.ENV, "off")
    assert backend.compiler_options("cpu") == off
    assert backend.compiler_options("gpu") == {}  # other backends never get options
    monkeypatch.setenv(backend.ENV, "on")
    assert backend.compiler_options("cpu") == {}
    monkeypatch.setenv(backend.ENV, "auto")
    expect = off if backend.cpu_has_avx512() is False else {}
    assert backend.compiler_options("cpu") == expect
    monkeypatch.delenv(backend.ENV)
    assert backend.compiler_options("cpu") == expect  # unset = auto


def test_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(backend.ENV, "maybe")
    with pytest.raises(ValueError, match="SELF2SEG_CPU_YNN='maybe'"):
        backend.compiler_options("cpu")


def test_cpu_flags_read():
    got = backend.cpu_has_avx512()
    assert got in (True, False, None)
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        assert got is None
        return
    assert got == (" avx512f" in text or "\tavx512f" in text or "avx512f " in text)


def test_jit_wrapper_static_args_and_lowering(monkeypatch):
    calls = []

    @backend.jit(static_argnames=("n",))
    def f(x, n):
        calls.append(n)  # traced once per static value
        return x * n

    assert f.__name__ == "f"
    monkeypatch.setenv(backend.ENV, "on")
    np.testing.assert_array_equal(f(jnp.arange(3.0), n=2), [0.0, 2.0, 4.0])
    f(jnp.arange(3.0), n=2)
    assert calls == [2]
    assert "multiply" in f.lower(jnp.arange(3.0), n=2).as_text()


@pytest.mark.skipif(jax.default_backend() != "cpu" or not backend.ynn_option_supported(),
                    reason="a CPU compiler option")
def test_wrapper_compiles_with_the_policy(monkeypatch):
    """With the option on, the compiled convolution has no YNN fusion; the policy is read at
    call time, so changing it between calls takes effect."""
    conv = backend.jit(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    x, w = jnp.ones((2, 16, 16, 32)), jnp.ones((3, 3, 32, 32))  # 32 channels: YNN takes it
    monkeypatch.setenv(backend.ENV, "on")
    if "ynn_fusion" not in conv.lower(x, w).compile().as_text():
        pytest.skip("this XLA does not fuse the convolution into YNNPACK: nothing to observe")
    y_on = conv(x, w)
    monkeypatch.setenv(backend.ENV, "off")
    assert "ynn_fusion" not in conv.lower(x, w).compile().as_text()
    y_off = conv(x, w)
    np.testing.assert_allclose(np.asarray(y_on), np.asarray(y_off), rtol=1e-6)
    assert float(y_on[0, 8, 8, 0]) == 288.0  # 3 x 3 x 32 ones


@pytest.mark.skipif(jax.default_backend() != "cpu" or not backend.ynn_option_supported(),
                    reason="a CPU compiler option")
def test_expert_training_agrees_with_and_without_ynn_fusions():
    """The option changes kernels, not the computation: a few Adam steps of crop training and
    the tiled output agree to float rounding."""
    rng = np.random.default_rng(0)
    f = jnp.asarray(rng.random((40, 40)), jnp.float32)
    w = (f > 0.5).astype(jnp.float32)
    cfg = s2s.Self2SegConfig(net_width=8, net_depth=2, train_max_steps=10, train_min_steps=10,
                             crop_size=16, tile_size=16).spec().train
    p = experts.init_params(jax.random.key(0), "n2f", cfg)

    def run(k, p, f, w):
        return experts.fit_n2f_crops(k, p, f, w, 1e-3, cfg)[1]

    a = jax.jit(run)(jax.random.key(1), p, f, w)
    b = jax.jit(run, compiler_options={backend.YNN_OPTION: ""})(jax.random.key(1), p, f, w)
    assert float(jnp.std(a)) > 1e-3  # a real output, not a constant
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def test_nested_and_transformed_calls(monkeypatch):
    """Called inside another jit, vmap or grad, the wrapped function is inlined (JAX accepts
    compiler options only on the outermost jit) and gives the same values."""
    monkeypatch.setenv(backend.ENV, "off")
    f = backend.jit(lambda x: jnp.sin(x) * 2.0)
    x = jnp.linspace(0.0, 1.0, 5)
    np.testing.assert_allclose(jax.jit(f)(x), f(x), rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(f)(x), f(x), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda x: f(x).sum())(x), 2.0 * jnp.cos(x), rtol=1e-6)
