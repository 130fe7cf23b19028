"""self2seg_jax.ops.checkerboard: Noise2Fast checkerboard pairs and blind-spot (J-invariant)
outputs, in 2-D and 3-D."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from self2seg_jax import ops

checkerboard_pairs = jax.jit(ops.checkerboard_pairs, static_argnames="ndim")


# --------------------------------------------------------------------------------------
# checkerboard pairs
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 8), (6, 10), (7, 9), (3, 6, 5)])
def test_checkerboard_pairs_partition_and_indexing(shape):
    n = int(np.prod(shape))
    x = np.arange(n, dtype=np.float32).reshape(shape)
    h, w = shape[-2] // 2 * 2, shape[-1] // 2 * 2
    pairs = checkerboard_pairs(jnp.asarray(x))
    assert len(pairs) == 4
    (xe, xo), (xo2, xe2), (ye, yo), (yo2, ye2) = [tuple(np.asarray(a) for a in p) for p in pairs]
    np.testing.assert_array_equal(xe, xe2)
    np.testing.assert_array_equal(xo, xo2)
    np.testing.assert_array_equal(ye, ye2)
    np.testing.assert_array_equal(yo, yo2)
    lead = shape[:-2]
    assert xe.shape == xo.shape == lead + (h, w // 2)
    assert ye.shape == yo.shape == lead + (h // 2, w)

    cropped = x[..., :h, :w]
    for a, b in ((xe, xo), (ye, yo)):
        for idx in np.ndindex(*lead) if lead else [()]:
            got = np.sort(np.concatenate([a[idx].ravel(), b[idx].ravel()]))
            np.testing.assert_array_equal(got, np.sort(cropped[idx].ravel()))

    for i in range(h):
        for j in range(w // 2):
            np.testing.assert_array_equal(xe[..., i, j], x[..., i, 2 * j + (i % 2)])
            np.testing.assert_array_equal(xo[..., i, j], x[..., i, 2 * j + 1 - (i % 2)])
    for i in range(h // 2):
        for j in range(w):
            np.testing.assert_array_equal(ye[..., i, j], x[..., 2 * i + (j % 2), j])
            np.testing.assert_array_equal(yo[..., i, j], x[..., 2 * i + 1 - (j % 2), j])


def test_checkerboard_even_and_odd_are_the_two_colours():
    x = np.arange(64, dtype=np.float32).reshape(8, 8)
    (xe, xo), _, (ye, yo), _ = checkerboard_pairs(jnp.asarray(x))
    colour = np.add.outer(np.arange(8), np.arange(8)) % 2 == 0
    np.testing.assert_array_equal(np.sort(np.asarray(xe).ravel()), np.sort(x[colour]))
    np.testing.assert_array_equal(np.sort(np.asarray(xo).ravel()), np.sort(x[~colour]))
    np.testing.assert_array_equal(np.sort(np.asarray(ye).ravel()), np.sort(x[colour]))
    np.testing.assert_array_equal(np.sort(np.asarray(yo).ravel()), np.sort(x[~colour]))


@pytest.mark.parametrize("shape", [(6, 4, 8), (7, 5, 9)])
def test_checkerboard_pairs_3d_partition_and_parity(shape):
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    pairs = checkerboard_pairs(jnp.asarray(x), ndim=3)
    assert len(pairs) == 6
    cropped = x[tuple(slice(0, s // 2 * 2) for s in shape)]
    zz, yy, xx = np.indices(cropped.shape)
    even_vals = set(cropped[(zz + yy + xx) % 2 == 0].tolist())
    odd_vals = set(cropped.ravel().tolist()) - even_vals
    for k, (inp, tgt) in enumerate(pairs):
        a = 2 - k // 2  # squeezed axis: x first, then y, then z
        expected = list(cropped.shape)
        expected[a] //= 2
        assert inp.shape == tgt.shape == tuple(expected)
        first = inp if k % 2 == 0 else tgt  # the "even" member
        second = tgt if k % 2 == 0 else inp
        assert set(np.asarray(first).ravel().tolist()) == even_vals
        assert set(np.asarray(second).ravel().tolist()) == odd_vals
    for k in range(3):
        np.testing.assert_array_equal(np.asarray(pairs[2 * k][0]), np.asarray(pairs[2 * k + 1][1]))
        np.testing.assert_array_equal(np.asarray(pairs[2 * k][1]), np.asarray(pairs[2 * k + 1][0]))
    # explicit indexing of the x-squeezed pair: x_even[z, y, m] = x[z, y, 2m + (z + y) % 2]
    xe = np.asarray(pairs[0][0])
    for z, y, m in np.ndindex(*xe.shape):
        assert xe[z, y, m] == cropped[z, y, 2 * m + (z + y) % 2]
    # the z-squeezed pair: z_even[m, y, x] = x[2m + (y + x) % 2, y, x]
    ze = np.asarray(pairs[4][0])
    for m, y, xi in np.ndindex(*ze.shape):
        assert ze[m, y, xi] == cropped[2 * m + (y + xi) % 2, y, xi]


def test_checkerboard_pairs_leading_axes_are_batch_axes(rng):
    """ndim=2 on (2, 10, 12) = the 2-D pairs of each image; ndim=3 on a stack of volumes too."""
    x = jnp.asarray(rng.normal(size=(2, 10, 12)), jnp.float32)
    for k in range(2):
        for (a, b), (c, d) in zip(checkerboard_pairs(x), checkerboard_pairs(x[k]), strict=True):
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(c))
            np.testing.assert_array_equal(np.asarray(b[k]), np.asarray(d))
    v = jnp.asarray(rng.normal(size=(2, 4, 6, 4)), jnp.float32)
    for k in range(2):
        pairs_k = checkerboard_pairs(v[k], ndim=3)
        for (a, b), (c, d) in zip(checkerboard_pairs(v, ndim=3), pairs_k, strict=True):
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(c))
            np.testing.assert_array_equal(np.asarray(b[k]), np.asarray(d))


# --------------------------------------------------------------------------------------
# blind spot (J-invariance)
# --------------------------------------------------------------------------------------


def _box3(z):
    k = jnp.asarray([[0.1, 0.2, 0.1], [0.2, 0.6, 0.3], [0.0, 0.1, 0.2]], z.dtype)
    f = lambda q: jax.scipy.signal.convolve2d(q, k, mode="same")  # noqa: E731
    return f(z) if z.ndim == 2 else jax.vmap(f)(z)


@pytest.mark.parametrize("shape", [(8, 10), (9, 11), (2, 6, 8)])
def test_blind_spot_output_never_sees_its_own_pixel(shape):
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    jac = jax.jit(jax.jacfwd(lambda z: ops.blind_spot(_box3, z, 2)))(x)
    n = x.size
    jac = np.asarray(jac).reshape(n, n)
    # cropped border voxels (odd sizes) are copied from `full` (= x here): their own weight is 1
    own = np.diag(jac).reshape(shape)
    crop = (Ellipsis,) + tuple(slice(0, s // 2 * 2) for s in shape[-2:])
    assert np.all(own[crop] == 0.0)
    if shape[-1] % 2:
        np.testing.assert_array_equal(own[..., :, -1], 1.0)
    # ...and the map is not trivial: every cropped output depends on some other pixel
    assert np.all(np.abs(jac).sum(1).reshape(shape)[crop] > 0.1)
    # leading axes are batch axes: no mixing between images
    if len(shape) == 3:
        j = jac.reshape(shape + shape)
        assert np.all(j[0, :, :, 1] == 0.0) and np.all(j[1, :, :, 0] == 0.0)


def test_blind_spot_full_fills_the_cropped_border(rng):
    x = jnp.asarray(rng.normal(size=(7, 9)), jnp.float32)
    full = jnp.full_like(x, -5.0)
    out = np.asarray(jax.jit(lambda z, f: ops.blind_spot(_box3, z, 2, full=f))(x, full))
    np.testing.assert_array_equal(out[-1, :], -5.0)
    np.testing.assert_array_equal(out[:, -1], -5.0)
    assert not np.any(out[:-1, :-1] == -5.0)


@pytest.mark.parametrize("shape,ndim", [((6, 8), 2), ((4, 6, 8), 3)])
def test_blind_spot_of_identity_is_mean_of_partners(shape, ndim, rng):
    """With apply = identity, each squeeze direction predicts a voxel by its partner along that
    axis (index ^ 1): the output is the mean of the ndim partners, never the voxel itself."""
    x = rng.normal(size=shape).astype(np.float32)
    out = np.asarray(jax.jit(lambda z: ops.blind_spot(lambda q: q, z, ndim))(jnp.asarray(x)))
    ref = np.zeros_like(x)
    for idx in np.ndindex(*shape):
        acc = 0.0
        for a in range(ndim):
            partner = list(idx)
            partner[a] ^= 1
            acc += x[tuple(partner)]
        ref[idx] = acc / ndim
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_blind_spot_3d_is_j_invariant():
    y = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6, 8)), jnp.float32)
    net = lambda q: 2.0 * q + jnp.roll(q, 1, -1)  # noqa: E731  (sees the "centre" of the squeezed image)
    jac = jax.jit(jax.jacfwd(lambda z: ops.blind_spot(net, z, 3)))(y)
    jac = np.asarray(jac).reshape(y.size, y.size)
    assert np.all(np.diag(jac) == 0.0)
    np.testing.assert_allclose(jac.sum(1), 3.0, rtol=1e-6)  # weights preserved
    # each output depends on voxels along all three axes (not only the last)
    dep = jac.reshape(y.shape + y.shape)[1, 2, 3]
    zs, ys, xs = np.nonzero(dep)
    assert set(zs) != {1} and set(ys) != {2} and set(xs) != {3}
