"""Helpers shared by the CLI test modules (``tests`` is on pytest's ``pythonpath``)."""

from __future__ import annotations

from self2seg_jax import cli

# Tiny CNN experts (shared by the n2f segment run, the demo and the config tests: one
# compilation per worker).
CHEAP_TOML = """\
net_width = 8
net_depth = 1
train_max_steps = 30
train_min_steps = 10
train_patience = 10
val_every = 10
n_average = 2
max_outer = 2
pd_max_iter = 300
init_denoise = false
"""


def run(argv, capfd):
    """``(exit code, stdout, stderr)`` of an in-process ``cli.main`` call."""
    rc = cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return rc, out, err


def error_lines(err):
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def assert_one_line_error(rc, err, *words):
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    for w in words:
        assert str(w) in lines[0], lines[0]
    return lines[0]


def files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []
