"""Many processes as one job (``self2seg_jax.distributed``): two local processes joined by
``jax.distributed`` on 127.0.0.1 (gloo collectives on CPU) segment a global batch and get the
one-process result; the command line splits files between processes, writes each output
once and lists every file with its process in one summary."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from self2seg_jax import distributed

CFG = ("s2s.Self2SegConfig(lam=0.05, mu=0.0, fg_expert='constant', bg_expert='constant', "
       "max_outer=4)")

BATCH = textwrap.dedent(f"""
    import sys
    import numpy as np
    from self2seg_jax import distributed
    pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    distributed.initialize(f"127.0.0.1:{{port}}", 2, pid)
    import jax, self2seg_jax as s2s
    assert jax.process_count() == 2 and jax.device_count() == 2 * jax.local_device_count()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:24, :24]
    imgs = np.stack([0.3 + 0.4 * ((yy - 12) ** 2 + (xx - 10 - s) ** 2 < 36)
                     + 0.1 * rng.standard_normal((24, 24)) for s in range(5)]).astype("float32")
    res = s2s.segment_batch(jax.random.key(1), imgs, config={CFG})
    got = distributed.gather({{"pid": pid, "n": int(res.mask.sum())}})
    assert [g["pid"] for g in got] == [0, 1] and got[0]["n"] == got[1]["n"], got
    np.save(out, res.mask)
    print("OK")
""")


SPACE = textwrap.dedent(f"""
    import sys
    import numpy as np
    from self2seg_jax import distributed
    pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    distributed.initialize(f"127.0.0.1:{{port}}", 2, pid)
    import jax, self2seg_jax as s2s
    mesh = s2s.space_mesh()
    assert mesh.devices.size == 2 and not all(d.process_index == pid for d in mesh.devices.flat)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :24]
    img = (0.3 + 0.4 * ((yy - 16) ** 2 + (xx - 10) ** 2 < 36)
           + 0.1 * rng.standard_normal((32, 24))).astype("float32")
    res = s2s.segment(jax.random.key(1), img, config={CFG}, mesh=mesh)
    np.save(out, res.mask)
    print("OK")
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(argv_of, tmp_path, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen(argv_of(i), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=tmp_path) for i in range(2)]
    outs = []
    for p in procs:
        try:
            o, e = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append((p.returncode, o, e))
    return outs


def _run_script(script: str, tmp_path, stem: str) -> None:
    """``script`` in two processes joined on a free port (argv: process id, port, output
    ``<stem><id>.npy``); both must print OK."""
    port = _free_port()
    outs = _two_processes(lambda i: [sys.executable, "-c", script, str(i), str(port),
                                     str(tmp_path / f"{stem}{i}.npy")], tmp_path)
    for code, o, e in outs:
        assert code == 0 and o.strip().endswith("OK"), e[-3000:]


def test_global_batch_over_two_processes_equals_one_process(tmp_path):
    import jax

    import self2seg_jax as s2s

    _run_script(BATCH, tmp_path, "mask")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:24, :24]
    imgs = np.stack([0.3 + 0.4 * ((yy - 12) ** 2 + (xx - 10 - s) ** 2 < 36)
                     + 0.1 * rng.standard_normal((24, 24)) for s in range(5)]).astype("float32")
    cfg = eval(CFG, {"s2s": s2s})
    keys = jax.random.split(jax.random.key(1), 5)
    for i in range(2):
        masks = np.load(tmp_path / f"mask{i}.npy")
        for j in range(5):
            np.testing.assert_array_equal(masks[j], s2s.segment(keys[j], imgs[j], config=cfg).mask)


def test_one_image_split_over_two_processes_equals_one_process(tmp_path):
    """A "space" mesh whose devices belong to two processes: inputs become global arrays built
    from each process's identical host copy, the result is gathered back whole in both."""
    import jax

    import self2seg_jax as s2s

    _run_script(SPACE, tmp_path, "space")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :24]
    img = (0.3 + 0.4 * ((yy - 16) ** 2 + (xx - 10) ** 2 < 36)
           + 0.1 * rng.standard_normal((32, 24))).astype("float32")
    ref = s2s.segment(jax.random.key(1), img, config=eval(CFG, {"s2s": s2s})).mask
    for i in range(2):
        m = np.load(tmp_path / f"space{i}.npy")
        assert m.shape == (32, 24) and np.mean(m != ref) <= 2 / m.size


def test_cli_over_two_processes_writes_each_output_once(tmp_path):
    import tifffile

    rng = np.random.default_rng(3)
    files = []
    for k in range(8):  # 6 of one shape (a global batch), 2 of their own shapes
        n = 24 if k < 6 else 20 + 2 * k
        yy, xx = np.mgrid[:n, :n]
        img = (80 + 90 * ((yy - n / 2) ** 2 + (xx - n / 2 - k % 3) ** 2 < (n / 4) ** 2)
               + 15 * rng.standard_normal((n, n))).astype(np.float32)
        f = tmp_path / f"img{k}.tif"
        tifffile.imwrite(f, img)
        files.append(str(f))
    opts = ["--fg-expert", "constant", "--bg-expert", "constant", "--mu", "0", "--lam", "0.05",
            "--max-outer", "4", "--no-compile-cache", "--quiet"]
    one = subprocess.run([sys.executable, "-m", "self2seg_jax.cli", "segment", *files, "-o",
                          str(tmp_path / "one"), *opts], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    port = _free_port()
    outs = _two_processes(lambda i: [
        sys.executable, "-m", "self2seg_jax.cli", "segment", *files, "-o", str(tmp_path / "two"),
        *opts, "--json", "--distributed", "--coordinator", f"127.0.0.1:{port}",
        "--num-processes", "2", "--process-id", str(i)], tmp_path)
    for code, _, e in outs:
        assert code == 0, e[-3000:]
    summary = json.loads(outs[0][1])
    assert outs[1][1].strip() == ""  # one summary, from process 0
    assert sorted(r["file"] for r in summary["results"]) == sorted(files)
    assert {r["process"] for r in summary["results"]} == {0, 1}
    assert summary["ok"] == 8 and summary["failed"] == 0
    import tifffile as tf

    for f in files:
        stem = os.path.splitext(os.path.basename(f))[0]
        for suffix in ("_mask.tif", "_denoised.tif", "_overlay.png", "_report.json"):
            assert (tmp_path / "two" / (stem + suffix)).is_file(), stem + suffix
        np.testing.assert_array_equal(tf.imread(tmp_path / "two" / f"{stem}_mask.tif"),
                                      tf.imread(tmp_path / "one" / f"{stem}_mask.tif"))
    # nothing else written (no temporary or duplicate files)
    assert len(list((tmp_path / "two").iterdir())) == 4 * 8


def test_assign_splits_every_item_once():
    for n, p in [(8, 2), (7, 3), (1, 4), (0, 2)]:
        parts = [distributed.assign(n, p, i) for i in range(p)]
        assert sorted(sum(parts, [])) == list(range(n))


def test_initialize_checks_its_arguments():
    with pytest.raises(ValueError, match="all three"):
        distributed.initialize("127.0.0.1:1234", 2)
    with pytest.raises(ValueError, match="process_id"):
        distributed.initialize("127.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match="host:port"):
        distributed.initialize("localhost", 2, 0)


def test_cli_job_flags_need_distributed(tmp_path, capfd):
    from tests.test_cli_run import CONST, run, write_blob

    img = write_blob(tmp_path)
    rc, _, err = run(["segment", img, "-o", tmp_path / "o", "--coordinator", "127.0.0.1:1",
                      *CONST], capfd)
    assert rc == 2 and "need --distributed" in err
    rc, _, err = run(["segment", img, "-o", tmp_path / "o", "--distributed", "--num-processes",
                      "2", *CONST], capfd)
    assert rc == 2 and "all three" in err
