"""``self2seg_jax.provenance``: versions, device, machine and git state of a result."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import self2seg_jax
from self2seg_jax import provenance as P

ROOT = Path(__file__).resolve().parents[1]


def _git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True,
                          timeout=30).stdout


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def test_versions():
    import jax
    import numpy as np

    v = P.versions()
    assert v["self2seg_jax"] == self2seg_jax.__version__
    assert v["jax"] == jax.__version__ and v["numpy"] == np.__version__
    assert v["backend"] == jax.default_backend() and v["device_count"] == jax.device_count()
    assert v["device"].startswith(f"{jax.devices()[0].platform}:0")
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", v["python"]) and v["platform"] and v["jaxlib"]


def test_provenance_fields():
    p = P.provenance()
    for k in ("self2seg_jax", "jax", "jaxlib", "numpy", "python", "platform", "backend",
              "device", "device_count"):
        assert p[k] == P.versions()[k], k
    assert isinstance(p["cpu"], str) and p["cpu"] and p["cpu"] == P.cpu_model()
    assert isinstance(p["cores"], int) and p["cores"] == os.cpu_count() >= 1
    assert set(p) >= {"commit", "clean"}


def test_run_record_names_the_command_load_and_machine():
    r = P.run_record(ROOT, ["bench.py", "--size", "a b"])
    assert r["command"] == "python bench.py --size 'a b'"  # shell-quoted: runnable as written
    assert len(r["load_average"]) == 3 and all(x >= 0 for x in r["load_average"])
    assert r["machine"]["commit"] == P.git_state(ROOT)["commit"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", r["date"])


@needs_git
def test_provenance_of_this_checkout():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in (None, ROOT, ROOT / "tests"):
        p = P.provenance(path)
        assert isinstance(p["commit"], str) and re.fullmatch(r"[0-9a-f]{40}", p["commit"])
        assert p["commit"] == _git("rev-parse", "HEAD", cwd=ROOT).strip()
        assert isinstance(p["clean"], bool)
        dirty = _git("status", "--porcelain", cwd=ROOT).strip()  # untracked files count too
        assert p["clean"] is (dirty == "")


def test_git_state_outside_a_repository(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # never look above
    assert P.git_state(tmp_path) == {"commit": None, "clean": None}
    p = P.provenance(tmp_path)
    assert p["commit"] is None and p["clean"] is None and p["jax"]
    # no git at all: the same, no exception
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert P.git_state(ROOT) == {"commit": None, "clean": None}


@needs_git
def test_git_state_of_a_fresh_repository(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    for k, v in {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
                 "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}.items():
        monkeypatch.setenv(k, v)
    repo = tmp_path / "repo"
    repo.mkdir()
    _git("init", "-q", cwd=repo)
    assert P.git_state(repo) == {"commit": None, "clean": None}  # no commit yet
    (repo / "a.txt").write_text("1\n")
    _git("add", "a.txt", cwd=repo)
    _git("commit", "-q", "-m", "first", cwd=repo)
    sha = _git("rev-parse", "HEAD", cwd=repo).strip()
    assert P.git_state(repo) == {"commit": sha, "clean": True}
    (repo / "sub").mkdir()
    assert P.git_state(repo / "sub") == {"commit": sha, "clean": True}  # a folder inside
    (repo / "new.txt").write_text("untracked\n")
    # an untracked (not ignored) file counts: the code that ran is then not the commit's
    assert P.git_state(repo)["clean"] is False
    (repo / "a.txt").write_text("2\n")
    assert P.git_state(repo) == {"commit": sha, "clean": False}
