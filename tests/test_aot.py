"""The export cache (``self2seg_jax.aot``): exported programs on disk give the same results as
the traced ones, are keyed by everything that decides them, survive a fresh load, and fall back
to the traced call when a file is unusable or a program cannot be exported."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import self2seg_jax as s2s
from self2seg_jax import aot


@pytest.fixture
def export_dir(tmp_path):
    aot.enable(tmp_path / "exported")
    try:
        yield tmp_path / "exported"
    finally:
        aot.disable()
        aot._state["loaded"].clear()
        aot._state["failed"].clear()


def _files(d, suffix=".jaxexport"):
    return sorted(p.name for p in d.iterdir() if p.name.endswith(suffix))


def _same(a, b):
    for name in ("labels", "energies", "mask_changes", "denoised", "probabilities"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.num_outer == b.num_outer and a.status == b.status


def test_off_by_default_and_a_plain_pass_through():
    assert aot.folder() is None
    assert aot.call(lambda x, *, k: x * k, "f", {"k": 3}, jnp.ones(2)).tolist() == [3.0, 3.0]


def test_exported_runs_equal_traced_runs_and_survive_a_fresh_load(export_dir, blob32,
                                                                  tiny_n2f_config):
    img, _ = blob32
    cfg = tiny_n2f_config.replace(max_outer=2)
    ref = s2s.segment(jax.random.key(0), img, config=cfg)  # exported, then called
    aot.disable()
    plain = s2s.segment(jax.random.key(0), img, config=cfg)  # traced
    aot.enable(export_dir)
    _same(ref, plain)
    files = _files(export_dir)
    # alternating.run twice: the scheme, and the refinement step after it (refine_size, on by
    # default and run on this low-noise blob: every class a smooth expert, another spec)
    assert len(files) == 2
    assert len(_files(export_dir, ".jaxexe")) == 2  # and the executables compiled from them
    aot._state["loaded"].clear()  # as a new process: read back from disk
    _same(s2s.segment(jax.random.key(0), img, config=cfg), plain)
    events = []
    stepped = s2s.segment(jax.random.key(0), img, config=cfg, progress=events.append)
    assert len(_files(export_dir)) == 4  # + init_state and outer_step (the progress path)
    aot._state["loaded"].clear()
    again = s2s.segment(jax.random.key(0), img, config=cfg, progress=events.append)
    _same(stepped, again)
    _same(stepped, plain)
    assert not [p for p in export_dir.iterdir() if p.name.startswith(".tmp-")]


def test_lam_auto_goes_through_exported_programs_with_the_same_results(export_dir, blob32,
                                                                         tiny_n2f_config):
    img, _ = blob32
    cfg = tiny_n2f_config.replace(max_outer=2, lam="auto")
    ref = s2s.segment(jax.random.key(1), img, config=cfg)
    names = set(_files(export_dir))
    # first_w_step, scale_of, run_from_w_step, and alternating.run of the refinement step
    assert len(names) == 4
    aot.disable()
    plain = s2s.segment(jax.random.key(1), img, config=cfg)
    aot.enable(export_dir)
    _same(ref, plain)
    assert ref.lam == plain.lam
    aot._state["loaded"].clear()  # a new process: every program read back from disk
    again = s2s.segment(jax.random.key(1), img, config=cfg)
    _same(again, plain)
    assert set(_files(export_dir)) == names  # nothing traced and exported again
    stepped = s2s.segment(jax.random.key(1), img, config=cfg, progress=lambda e: None)
    assert len(_files(export_dir)) == 6  # + u_step and outer_step (the progress path)
    aot._state["loaded"].clear()
    _same(s2s.segment(jax.random.key(1), img, config=cfg, progress=lambda e: None), stepped)
    assert stepped.lam == plain.lam


def test_key_follows_shapes_statics_and_source():
    spec = s2s.Self2SegConfig().spec()
    x = (jnp.zeros((8, 8)), {"a": jnp.zeros(3, jnp.int32)})
    k = aot.program_key("f", {"spec": spec}, x)
    assert k == aot.program_key("f", {"spec": spec}, (jnp.ones((8, 8)), {"a": jnp.ones(3, jnp.int32)}))
    assert k != aot.program_key("g", {"spec": spec}, x)
    assert k != aot.program_key("f", {"spec": spec}, (jnp.zeros((8, 9)), x[1]))
    assert k != aot.program_key("f", {"spec": spec}, (x[0], {"a": jnp.zeros(3, jnp.float32)}))
    assert k != aot.program_key("f", {"spec": spec}, (x[0], {"b": x[1]["a"]}))
    other = s2s.Self2SegConfig(net_width=16).spec()
    assert k != aot.program_key("f", {"spec": other}, x)
    assert len(aot.source_digest()) == 64


def test_unusable_file_and_unexportable_programs_fall_back(export_dir):
    f = jax.jit(lambda x, *, k: jnp.sin(x) * k, static_argnames="k")
    x = jnp.linspace(0.0, 1.0, 5)
    want = np.asarray(f(x, k=2.0))
    np.testing.assert_array_equal(aot.call(f, "sin", {"k": 2.0}, x), want)
    (path,) = export_dir.glob("*.jaxexport")
    for exe in export_dir.glob("*.jaxexe"):  # the exported program's own fallbacks first
        exe.unlink()
    path.write_bytes(b"not a program")  # corrupt: rebuilt, same result
    aot._state["loaded"].clear()
    np.testing.assert_array_equal(aot.call(f, "sin", {"k": 2.0}, x), want)
    assert path.read_bytes() != b"not a program"
    y = jnp.linspace(0.0, 1.0, 6)  # a readable program that cannot take these arguments
    other = export_dir / f"{aot.program_key('sin', {'k': 2.0}, (y,))}.jaxexport"
    other.write_bytes(path.read_bytes())
    for exe in export_dir.glob("*.jaxexe"):
        exe.unlink()
    aot._state["loaded"].clear()
    np.testing.assert_array_equal(aot.call(f, "sin", {"k": 2.0}, y), np.asarray(f(y, k=2.0)))
    other.unlink()

    def with_callback(x):  # host callbacks cannot be exported: traced call instead
        return jax.pure_callback(lambda a: np.asarray(a) + 1, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    np.testing.assert_array_equal(aot.call(with_callback, "cb", {}, x), np.asarray(x) + 1)
    assert len(_files(export_dir)) == 1


def test_executables_are_stored_loaded_and_replaced_when_unusable(export_dir, monkeypatch):
    """A process that compiled an exported program keeps its executable; a new process runs
    that executable without reading the exported program; a broken one is deleted and the
    exported program used instead; one from the compilation cache is not stored."""
    f = jax.jit(lambda x, *, k: jnp.cos(x) * k + jnp.sum(x), static_argnames="k")
    x = jnp.linspace(0.0, 2.0, 7)
    want = np.asarray(f(x, k=3.0))
    np.testing.assert_allclose(aot.call(f, "cos", {"k": 3.0}, x), want, rtol=1e-6)
    (exe,) = export_dir.glob("*.jaxexe")
    assert exe.name.startswith(aot.program_key("cos", {"k": 3.0}, (x,)))
    read = []
    load = aot._load
    monkeypatch.setattr(aot, "_load", lambda path: read.append(path) or load(path))
    aot._state["loaded"].clear()  # as a new process
    np.testing.assert_allclose(aot.call(f, "cos", {"k": 3.0}, x), want, rtol=1e-6)
    assert read == []  # the executable ran; the exported program was not even read
    exe.write_bytes(b"not an executable")
    aot._state["loaded"].clear()
    np.testing.assert_allclose(aot.call(f, "cos", {"k": 3.0}, x), want, rtol=1e-6)
    assert len(read) == 1  # fell back to the exported program ...
    assert exe.exists() and exe.read_bytes() != b"not an executable"  # ... compiled, stored
    exe.unlink()
    from self2seg_jax import progress

    class _CacheHit:  # the compilation came from the persistent cache: nothing stored
        def __enter__(self):
            return {"count": 0, "cache_hits": 1, "seconds": 0.0}

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(progress, "compilations", lambda: _CacheHit())
    aot._state["loaded"].clear()
    np.testing.assert_allclose(aot.call(f, "cos", {"k": 3.0}, x), want, rtol=1e-6)
    assert not list(export_dir.glob("*.jaxexe"))


def test_training_reports_bypass_the_cache(export_dir, blob32, tiny_n2f_config):
    spec = tiny_n2f_config.replace(progress_training=True).spec()
    assert spec.train.report and not aot.exportable(spec)
    assert aot.exportable(tiny_n2f_config.spec())



def test_cli_writes_exported_programs_and_leaves_the_library_setting_alone(tmp_path, monkeypatch,
                                                                             capfd, make_blob):
    import tifffile
    from cli_helpers import run

    monkeypatch.setenv("SELF2SEG_CACHE_DIR", str(tmp_path / "cache"))
    img, _ = make_blob(0, 32, 0.1)
    tifffile.imwrite(tmp_path / "img.tif", img)
    const = ["--fg-expert", "constant", "--bg-expert", "constant", "--max-outer", "2",
             "--no-init-denoise", "--quiet"]
    rc, _, err = run(["segment", tmp_path / "img.tif", "-o", tmp_path / "out", *const], capfd)
    assert rc == 0, err
    assert aot.folder() is None  # restored after the in-process command
    assert len(list((tmp_path / "cache" / "exported").glob("*.jaxexport"))) >= 1
    monkeypatch.setenv("SELF2SEG_EXPORT_CACHE", "0")
    monkeypatch.setenv("SELF2SEG_CACHE_DIR", str(tmp_path / "cache2"))
    rc, _, err = run(["segment", tmp_path / "img.tif", "-o", tmp_path / "out2", *const], capfd)
    assert rc == 0, err
    assert not (tmp_path / "cache2" / "exported").exists()
