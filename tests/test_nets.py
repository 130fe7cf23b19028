"""self2seg_jax.nets: the expert CNN's factorised ("(2+1)-D") volume layers are 3x3x3
convolutions with the composed kernel, with the loop-safe backward pass equal to autodiff."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import self2seg_jax as s2s
from self2seg_jax import experts, nets


def _randomised(params, key):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [a + 0.3 * jax.random.normal(k, a.shape)
                                     for a, k in zip(leaves, keys)])


def _full_conv(x, w, b, padding):
    return lax.conv_general_dilated(x, w, (1, 1, 1), padding,
                                    dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                    precision=lax.Precision.HIGHEST) + b


@pytest.mark.parametrize("impl", ["lax", "loopsafe"])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_factorised_layer_is_the_3x3x3_convolution_with_the_composed_kernel(impl, padding, rng):
    layer = nets._Conv(5, impl, 3, factorised=True)
    x = jnp.asarray(rng.normal(size=(2, 6, 7, 8, 3)), jnp.float32)
    p = _randomised(layer.init(jax.random.key(0), x)["params"], jax.random.key(1))
    assert p["kernel"].shape == (1, 3, 3, 3, 5) and p["kernel_z"].shape == (3, 1, 1, 5, 5)
    # W[z, y, x, i, o] = sum_m Wxy[y, x, i, m] Wz[z, m, o]
    w = jnp.einsum("yxim,zmo->zyxio", p["kernel"][0], p["kernel_z"][:, 0, 0])
    out = jax.jit(lambda p, x: layer.apply({"params": p}, x, padding))(p, x)
    ref = _full_conv(x, w, p["bias"], padding)
    assert out.shape == ref.shape == ((2, 6, 7, 8, 5) if padding == "SAME" else (2, 4, 5, 6, 5))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-4, atol=1e-4)


def test_factorised_net_loopsafe_gradients_equal_autodiff(rng):
    """The loop-safe backward pass of the factorised layers (2-D slice convolutions and 1x1
    products) against XLA's autodiff of the same network, inside a ``fori_loop``."""
    x = jnp.asarray(rng.random((2, 8, 9, 7)), jnp.float32)
    t = jnp.asarray(rng.random((2, 8, 9, 7)), jnp.float32)
    nets_ = {impl: nets.N2FNet(width=4, depth=2, impl=impl, ndim=3, factorised=True)
             for impl in ("lax", "loopsafe")}
    p = _randomised(nets_["lax"].init(jax.random.key(0), x)["params"], jax.random.key(2))

    def grads(impl):
        loss = lambda p: jnp.sum((nets_[impl].apply({"params": p}, x) - t) ** 2)  # noqa: E731
        return jax.jit(lambda p: lax.fori_loop(0, 1, lambda _, g: jax.grad(loss)(p), p))(p)

    ga, gb = grads("loopsafe"), grads("lax")
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        assert float(jnp.max(jnp.abs(b))) > 0
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=1e-5)


def test_factorised_applies_to_volumes_only():
    """In 2-D ``factorised`` changes nothing (same parameters, same outputs); in 3-D it has
    ``9 c_in + 3 c`` instead of ``27 c_in`` weights per output channel."""
    def init(x, **kw):  # shapes only: no compilation, no arithmetic
        net = nets.N2FNet(width=6, depth=2, ndim=x.ndim - 1, **kw)
        return jax.eval_shape(lambda: net.init(jax.random.key(0), x)["params"])

    x2 = jnp.ones((1, 8, 8), jnp.float32)
    assert init(x2) == init(x2, factorised=True)
    net2 = nets.N2FNet(width=6, depth=2)
    p = jax.jit(net2.init)(jax.random.key(0), x2)["params"]
    out = jax.jit(nets.N2FNet(width=6, depth=2, factorised=True).apply)({"params": p}, x2 + 0.5)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(
        jax.jit(net2.apply)({"params": p}, x2 + 0.5)))
    x3 = jnp.ones((1, 6, 8, 8), jnp.float32)
    sizes = {f: sum(a.size for a in jax.tree.leaves(init(x3, factorised=f)))
             for f in (False, True)}
    # layer 1: 27*1*6 vs 9*1*6 + 3*6*6; layer 2: 27*6*6 vs 9*6*6 + 3*6*6; biases; the 1x1 head
    assert sizes == {False: 27 * 6 + 27 * 36 + 12 + 7, True: 9 * 6 + 3 * 36 + 12 * 36 + 12 + 7}


def test_config_net_conv3d_reaches_the_training_config_and_is_checked():
    cfg = s2s.Self2SegConfig(net_conv3d="factorised")
    assert cfg.spec(ndim=3).train.conv3d == "factorised"
    assert s2s.Self2SegConfig().spec(ndim=3).train.conv3d == "full"
    with pytest.raises(ValueError, match="net_conv3d"):
        s2s.Self2SegConfig(net_conv3d="separable")


def test_factorised_volume_training_lowers_the_crop_loss(rng):
    """A few Adam steps of crop training with factorised layers on a small noisy volume:
    finite, and the validation score improves on the fresh network's."""
    from tests.test_experts_crops import SMALL

    cfg = dataclasses.replace(SMALL, ndim=3, crop=4, tile=8, conv3d="factorised",
                              conv_impl="loopsafe", max_steps=30, min_steps=30)
    clean = np.zeros((10, 12, 12), np.float32)
    clean[3:7, 3:9, 4:10] = 0.8
    f = jnp.asarray(clean + 0.1 * rng.normal(size=clean.shape), jnp.float32)
    w = jnp.ones_like(f)
    p0 = experts.init_params(jax.random.key(0), "n2f", cfg)
    p, out, steps = jax.jit(lambda p: experts.fit_n2f_crops(jax.random.key(1), p, f, w, 1e-2,
                                                            cfg))(p0)
    before = experts._net(cfg).apply({"params": p0}, f)
    assert int(steps) == 30 and bool(jnp.all(jnp.isfinite(out)))
    err = lambda o: float(jnp.mean((o - clean) ** 2))  # noqa: E731
    assert err(out) < 0.5 * err(before)
