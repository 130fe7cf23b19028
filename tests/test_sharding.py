"""One image across devices (``segment(..., mesh=space_mesh())``): on 4 forced CPU devices the
result equals the single-device run and the device arrays really are split along the first
spatial axis; the mesh is checked before anything runs."""

from __future__ import annotations

import textwrap

import jax
import numpy as np
import pytest

import self2seg_jax as s2s
from self2seg_jax import sharding
from tests.conftest import run_on_forced_cpu_devices

FORCED = textwrap.dedent("""
    import time
    import jax, numpy as np, self2seg_jax as s2s
    from self2seg_jax import api, sharding
    assert jax.device_count() == 4, jax.devices()
    mesh = s2s.space_mesh()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:38, :30]  # 38 rows: not a multiple of 4 (uneven shards)
    img = (0.3 + 0.4 * ((yy - 19) ** 2 + (xx - 14) ** 2 < 80)
           + 0.1 * rng.standard_normal((38, 30))).astype("float32")
    vol = np.stack([img[12:28, 6:22]] * 8) + 0.05 * rng.standard_normal((8, 16, 16))
    cases = [
        ("const", img, {}, s2s.Self2SegConfig(lam=0.05, mu=0.0, fg_expert="constant",
                                              bg_expert="constant", max_outer=4)),
        ("n2f", img, {}, s2s.Self2SegConfig(lam=0.02, mu=0.0, net_width=8, net_depth=2,
                                            train_max_steps=30, train_min_steps=10,
                                            train_patience=10, max_outer=3, crop_size=8)),
        ("volume", vol.astype("float32"), {"volume": True},
         s2s.Self2SegConfig(lam=0.02, mu=0.0, net_width=4, net_depth=2, train_max_steps=20,
                            train_min_steps=10, train_patience=10, max_outer=2, crop_size=8,
                            tile_size=8)),
    ]
    for name, im, kw, cfg in cases:
        t0 = time.perf_counter()
        one = s2s.segment(jax.random.key(3), im, config=cfg, **kw)
        sh = s2s.segment(jax.random.key(3), im, config=cfg, mesh=mesh, **kw)
        differ = int((one.mask != sh.mask).sum())
        assert differ <= 2, (name, differ)
        assert sh.num_outer == one.num_outer, name
        # The experts agree up to float rounding. The relaxed mask u is a primal-dual iterate at
        # its stopping tolerance, and the sharded gap (another summation order) may stop it one
        # check earlier or later: where u is fractional it then differs a little (AMD EPYC,
        # volume case: 160 vs 170 iterations, 11 of 2048 voxels, up to 0.06). The composite
        # output differs only there.
        np.testing.assert_allclose(sh.expert_outputs, one.expert_outputs, atol=1e-4, err_msg=name)
        du = np.abs(sh.probabilities - one.probabilities).max(axis=0)
        assert du.max() <= 0.2 and np.mean(du > 1e-3) <= 0.02, (name, du.max(), (du > 1e-3).sum())
        same = du <= 1e-3
        np.testing.assert_allclose(sh.denoised[same], one.denoised[same], atol=2e-3, err_msg=name)
        if name == "const":  # progress reported: the Python-driven loop, same result
            events = []
            sh2 = s2s.segment(jax.random.key(3), im, config=cfg, mesh=mesh,
                              progress=events.append, **kw)
            assert (sh2.mask == sh.mask).all() and len(events) == sh.num_outer, name
        print(name, round(time.perf_counter() - t0, 1), flush=True)
    # the device arrays are split along the first spatial axis over the 4 devices (40 rows:
    # a jax.Array holds even shards only; uneven ones stay split inside the program alone)
    cfg = cases[0][3]
    p = api.prepare(jax.random.key(3), np.concatenate([img, img[:2]]), config=cfg)
    st = sharding.run_space(p.k_run, p.f, p.start.weights, p.start.labels, cfg.hyper(), p.spec,
                            mesh)
    for a in (st.u, st.labels, st.w, st.den):
        assert len(a.sharding.device_set) == 4, a.sharding
        spec = tuple(a.sharding.spec) + (None,) * a.ndim
        assert spec[a.ndim - 2] == "space", (a.shape, a.sharding.spec)
        rows = sorted(s.data.shape[a.ndim - 2] for s in a.addressable_shards)
        assert rows == [10, 10, 10, 10], rows
    print("OK")
""")


def test_space_sharding_over_four_forced_cpu_devices(tmp_path):
    run_on_forced_cpu_devices(FORCED, tmp_path)


def test_space_mesh_is_checked_before_running(blob32, const_config):
    img, _ = blob32
    bad = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
    with pytest.raises(ValueError, match="axis named 'space'"):
        s2s.segment(jax.random.key(0), img, config=const_config, mesh=bad)
    with pytest.raises(ValueError, match="Mesh"):
        s2s.segment(jax.random.key(0), img, config=const_config, mesh="space")


def test_space_mesh_on_one_device_equals_plain_run(blob32, const_config):
    img, _ = blob32
    mesh = sharding.space_mesh(jax.devices()[:1])
    assert mesh.axis_names == ("space",)
    a = s2s.segment(jax.random.key(1), img, config=const_config)
    b = s2s.segment(jax.random.key(1), img, config=const_config, mesh=mesh)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.num_outer == b.num_outer


CROPS = textwrap.dedent("""
    import dataclasses
    import jax, jax.numpy as jnp, numpy as np
    from self2seg_jax import experts, sharding
    assert jax.device_count() == 4
    mesh = sharding.space_mesh()
    cfg = experts.TrainConfig(width=4, depth=2, mode="crops", crop=8, batch=3, val_crops=5,
                              max_steps=20, min_steps=20, val_every=10, n_average=2)
    cfgm = dataclasses.replace(cfg, crop_mesh=mesh)
    rng = np.random.default_rng(0)
    f = jnp.asarray(rng.random((24, 20)), jnp.float32)
    w = (f > 0.5).astype(jnp.float32)
    p = experts.init_params(jax.random.key(0), "n2f", cfg)
    s = experts.crop_sampler(f, w, cfg)
    x, wt, v = experts.crop_batch(s, jnp.array([0, 3, 5]), cfg, 0)
    # 3 crops padded to 4 with a zero-weight copy of the first, split one per device
    xs, ws, vs = experts.shard_crops((x, wt, v), cfgm)
    assert xs.shape[0] == ws.shape[0] == 4 and float(jnp.abs(ws[3]).sum()) == 0.0
    assert float(jnp.abs(ws[:3] - wt).max()) == 0.0 and float(jnp.abs(xs[3] - x[0]).max()) == 0.0
    assert len(xs.sharding.device_set) == 4 and xs.sharding.spec[0] == "space", xs.sharding
    # the split loss (both pairs of the 3 crops: 6 rows, padded to 8) and its gradient equal
    # the unsplit ones
    vg = jax.value_and_grad(experts.crop_loss)
    l0, g0 = jax.jit(vg, static_argnums=(4, 5))(p, x, wt, v, 0, cfg)
    l1, g1 = jax.jit(vg, static_argnums=(4, 5))(p, x, wt, v, 0, cfgm)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # a whole crop-trained W-step: same steps, same expert up to float rounding
    fit = jax.jit(experts.fit_n2f_crops, static_argnames="cfg")
    r0 = fit(jax.random.key(1), p, f, w, 1e-3, cfg=cfg)
    r1 = fit(jax.random.key(1), p, f, w, 1e-3, cfg=cfgm)
    assert int(r0[2]) == int(r1[2]) == 20
    np.testing.assert_allclose(np.asarray(r1[1]), np.asarray(r0[1]), atol=1e-4)
    print("OK")
""")


def test_training_crops_split_over_forced_cpu_devices(tmp_path):
    """The space path's data parallelism (experts.shard_crops): padding crops carry zero weight,
    the crops really are split over the 4 devices, and loss, gradient and a whole W-step equal
    the unsplit ones."""
    run_on_forced_cpu_devices(CROPS, tmp_path)


def test_sharded_runs_iterate_the_mask_step_on_whole_arrays():
    """The CPU policy bands the mask step (pdhg.Problem.block_pixels); a spatially sharded run
    must not (bands along the sharded axis would gather the image), and keeps its crop mesh."""
    spec = s2s.Self2SegConfig().spec(backend="cpu")
    assert spec.problem.block_pixels > 0
    mesh = sharding.space_mesh()
    sharded = sharding.with_crop_mesh(spec, mesh)
    assert sharded.problem.block_pixels == 0 and sharded.train.crop_mesh is mesh
