"""segment_batch: B same-shape images in one compiled call, sharded over a device mesh; image i
gets the result of segment(split(key, B)[i], images[i])."""

from __future__ import annotations

import textwrap

import jax
import numpy as np
import pytest

import self2seg_jax as s2s
from self2seg_jax import batch
from tests.conftest import run_on_forced_cpu_devices


@pytest.fixture(scope="module")
def blobs(make_blob):
    return np.stack([make_blob(s, 32, 0.1)[0] for s in range(3)])


@pytest.mark.parametrize("which", ["const", "n2f"])
def test_batch_equals_single_runs(which, blobs, const_config, tiny_n2f_config):
    cfg = const_config if which == "const" else tiny_n2f_config
    res = s2s.segment_batch(jax.random.key(5), blobs, config=cfg)
    keys = jax.random.split(jax.random.key(5), len(blobs))
    assert res.batched and res.mask.shape == blobs.shape
    for i, img in enumerate(blobs):
        one = s2s.segment(keys[i], img, config=cfg)
        assert np.mean(res.mask[i] != one.mask) <= 0.002  # batched-conv rounding at most
        assert res.num_outer[i] == one.num_outer and res.status[i] == one.status
        n = one.num_outer
        np.testing.assert_allclose(res.energies[i, :n], one.energies, rtol=1e-3)
        assert np.all(np.isnan(res.energies[i, n:]))
        np.testing.assert_array_equal(res.init_mask[i], one.init_mask)
        np.testing.assert_allclose(res.u[i], one.u, atol=2e-3)
        np.testing.assert_allclose(res.denoised_fg[i], one.denoised_fg, rtol=1e-3, atol=1e-3)
    assert res.denoised_bg.shape == blobs.shape and res.probabilities.shape[:2] == (3, 2)


def test_threads_change_nothing_but_time(blobs, tiny_n2f_config):
    """On one device the images may run from several host threads at once: the same results,
    bit for bit, as one after the other (each is its own compiled run)."""
    one = s2s.segment_batch(jax.random.key(5), blobs, config=tiny_n2f_config, threads=1)
    three = s2s.segment_batch(jax.random.key(5), blobs, config=tiny_n2f_config, threads=3)
    np.testing.assert_array_equal(one.labels, three.labels)
    np.testing.assert_array_equal(one.energies, three.energies)
    np.testing.assert_array_equal(one.denoised, three.denoised)
    assert list(one.status) == list(three.status)
    assert 1 <= batch.default_threads(3) <= 3 and batch.default_threads(1) == 1
    assert batch.default_threads(3, pixels=10**15) == 1  # runs that cannot fit in memory
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            s2s.segment_batch(jax.random.key(5), blobs, config=tiny_n2f_config, threads=bad)


def test_batch_inputs_checked(blobs, const_config):
    with pytest.raises(ValueError, match="empty batch"):
        s2s.segment_batch(jax.random.key(0), [], config=const_config)
    with pytest.raises(ValueError, match="one shape"):
        s2s.segment_batch(jax.random.key(0), [blobs[0], blobs[1][:30]], config=const_config)
    with pytest.raises(ValueError, match="batch axis"):
        s2s.segment_batch(jax.random.key(0), blobs[0], config=const_config)
    bad = blobs.copy()
    bad[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="image 1: .*(NaN|finite)"):
        s2s.segment_batch(jax.random.key(0), bad, config=const_config)
    with pytest.raises(ValueError, match="2 starts for 3 images"):
        s2s.segment_batch(jax.random.key(0), blobs, init=["otsu", "otsu"], config=const_config)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("space",))
    with pytest.raises(ValueError, match="axis named 'batch'"):
        s2s.segment_batch(jax.random.key(0), blobs, config=const_config, mesh=mesh)


FORCED = textwrap.dedent("""
    import jax, numpy as np, self2seg_jax as s2s
    from self2seg_jax import api, batch
    assert jax.device_count() == 4, jax.devices()
    cfg = s2s.Self2SegConfig(lam=0.05, mu=0.0, fg_expert="constant", bg_expert="constant",
                             max_outer=4)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:24, :24]
    imgs = np.stack([0.3 + 0.4 * ((yy - 12) ** 2 + (xx - 10 - s) ** 2 < 36)
                     + 0.1 * rng.standard_normal((24, 24)) for s in range(6)]).astype("float32")
    res = s2s.segment_batch(jax.random.key(1), imgs, config=cfg)  # 6 = 4 + 2: padded to 8
    keys = jax.random.split(jax.random.key(1), 6)
    for i in range(6):
        one = s2s.segment(keys[i], imgs[i], config=cfg)
        assert (res.mask[i] == one.mask).all() and res.num_outer[i] == one.num_outer
    # the compiled batch really is split over the 4 devices
    ps = [api.prepare(k, im, config=cfg) for k, im in zip(keys[:4], imgs[:4])]
    sh = jax.sharding.NamedSharding(batch.batch_mesh(), jax.sharding.PartitionSpec("batch"))
    args = jax.device_put((jax.numpy.stack([p.k_run for p in ps]), np.stack([p.f for p in ps]),
                           np.stack([p.start.weights for p in ps]),
                           np.stack([p.start.labels for p in ps])), sh)
    for mode in ("vmap", "map"):  # each device runs its own shard (shard_map) either way
        st = batch.run_batch(*args, cfg.hyper(), ps[0].spec, mode, batch.batch_mesh())
        assert len(st.labels.sharding.device_set) == 4, st.labels.sharding
        assert st.labels.addressable_shards[0].data.shape == (1, 24, 24)
        for i in range(4):
            assert ((np.asarray(st.labels[i]) > 0) == res.mask[i]).all(), (mode, i)
    # lam="auto": each image its own value, sharded with its image (per-image Hyper leaves)
    auto = s2s.segment_batch(jax.random.key(1), imgs, config=cfg.replace(lam="auto"))
    for i in range(6):
        one = s2s.segment(keys[i], imgs[i], config=cfg.replace(lam="auto"))
        assert auto.lam[i] == one.lam and (auto.mask[i] == one.mask).all(), i
    assert len(set(auto.lam.tolist())) > 1, auto.lam
    print("OK")
""")


def test_batch_sharded_over_four_forced_cpu_devices(tmp_path):
    run_on_forced_cpu_devices(FORCED, tmp_path)


def test_batch_mesh_default_is_every_device():
    m = batch.batch_mesh()
    assert m.axis_names == ("batch",) and m.shape["batch"] == jax.device_count()


def test_item_and_per_image_keys(blobs, const_config):
    """``item(i)`` is image i's result as ``segment`` returns it; a ``(B,)`` key array gives
    every image its own key (the command line's one key per file)."""
    keys = jax.numpy.stack([jax.random.key(9)] * len(blobs))
    res = s2s.segment_batch(keys, blobs, config=const_config)
    for i, img in enumerate(blobs):
        one = s2s.segment(jax.random.key(9), img, config=const_config)
        it = res.item(i)
        assert not it.batched and it.num_outer == one.num_outer and it.status == one.status
        np.testing.assert_array_equal(it.mask, one.mask)
        assert it.energies.shape == one.energies.shape
        assert it.train_steps.shape == one.train_steps.shape
        np.testing.assert_allclose(it.energies, one.energies, rtol=1e-5)
    with pytest.raises(ValueError, match="batched"):
        one.item(0)
