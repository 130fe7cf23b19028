"""``self2seg_jax.cli.parser``: help and version, flags generated from :class:`Self2SegConfig`,
TOML files and the precedence ``defaults < --paper / TOML < flags``.

Nothing here segments an image: the tests that go through ``cli.main`` stop at option
resolution (a bad option or config file is reported before any JAX work).
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
from cli_helpers import CHEAP_TOML, assert_one_line_error, files, run

import self2seg_jax
from self2seg_jax import Self2SegConfig, cli
from self2seg_jax.cli import parser as P


def write_image(folder, name="img.tif"):
    rng = np.random.default_rng(0)
    p = folder / name
    tifffile.imwrite(p, (0.5 + 0.1 * rng.standard_normal((32, 32))).astype(np.float32))
    return p


def _args(argv):
    return cli.build_parser().parse_args([str(a) for a in argv])


def _config(argv):
    return cli.config_from_args(_args(argv))


def _help_entries(text: str) -> dict:
    """Option entries of an argparse help text: first option string -> the entry's text
    (invocation and help, whitespace collapsed)."""
    entries, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (-{1,2}[A-Za-z][\w-]*)", line)
        if m:
            current = m.group(1)
            entries[current] = line
        elif current is not None and line.startswith("    "):
            entries[current] += " " + line
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


# ------------------------------------------------------------------------------- help/version


def test_help_version_and_no_command(capfd):
    rc, out, _ = run(["--help"], capfd)
    assert rc == 0 and "segment" in out and "demo" in out and "examples:" in out
    rc, out, _ = run(["segment", "--help"], capfd)
    assert rc == 0
    for opt in ("--lam", "--mu", "--fg-expert", "--fg-box", "--bg-box", "--init", "--config",
                "--gt", "--clean", "--png", "--overwrite", "--json", "--quiet", "--paper",
                "--classes", "--channel-axis", "--volume", "--spacing", "examples:"):
        assert opt in out, opt
    rc, out, _ = run(["demo", "--help"], capfd)
    assert rc == 0 and "--size" in out and "--noise" in out and "--lam" in out
    rc, out, _ = run(["--version"], capfd)
    assert rc == 0 and out.strip() == f"self2seg_jax {self2seg_jax.__version__}"
    rc, _, err = run([], capfd)
    assert rc == 2 and "usage" in err
    rc, _, err = run(["segment", "x.tif"], capfd)  # -o missing: argparse usage error
    assert rc == 2 and "--outdir" in err
    rc, _, err = run(["segment", "x.tif", "-o", "o", "--fg-box", "1,2,3"], capfd)
    assert rc == 2 and "four integers" in err
    rc, _, err = run(["segment", "x.tif", "-o", "o", "--spacing", "1,a"], capfd)
    assert rc == 2 and "comma-separated numbers" in err
    rc, _, err = run(["segment", "x.tif", "-o", "o", "--fg-expert", "unet"], capfd)
    assert rc == 2 and "invalid choice" in err


def _default_in_help(field, entry: str):
    """The default a help entry quotes, parsed back to the field's type."""
    m = re.search(r"\(default:? ([^)]+)\)", entry)
    assert m, f"--help shows no default for {field.name}: {entry!r}"
    text = m.group(1)
    if field.type == "bool":
        return {"on": True, "off": False}[text]
    return {"float": float, "float | str": float, "int": int, "str": str}[field.type](text)


@pytest.mark.parametrize("command", ["segment", "demo"])
def test_every_cli_field_is_a_flag_showing_its_default(capfd, command):
    """Replaces the old HELP_DEFAULTS table: the flags and the defaults --help quotes come from
    Self2SegConfig's fields, so they cannot go stale."""
    rc, out, _ = run([command, "--help"], capfd)
    assert rc == 0
    entries = _help_entries(out)
    default = Self2SegConfig()
    cli_fields = [f for f in dataclasses.fields(Self2SegConfig) if "cli" in f.metadata]
    assert {f.name for f in cli_fields} == {f.name for f in P.CLI_FIELDS}
    assert len(cli_fields) >= 14  # lam, mu, experts, data filter/term, net, steps, ...
    for f in cli_fields:
        flag = P.flag_name(f)
        assert flag in entries, f"{f.name}: {flag} missing from `{command} --help`"
        entry = entries[flag]
        assert _default_in_help(f, entry) == getattr(default, f.name), (f.name, entry)
        # the field's own help text is what --help shows
        first_words = " ".join(f.metadata["help"].split()[:4])
        assert first_words in entry, (f.name, entry)
        if f.type == "bool":
            assert "--no-" + flag[2:] in entry, entry
    # the documented flag names of the non-derived ones
    train_max_steps = next(f for f in cli_fields if f.name == "train_max_steps")
    assert P.flag_name(train_max_steps) == "--train-steps"
    # fields without cli metadata have no flag (progress is --quiet's business)
    for f in dataclasses.fields(Self2SegConfig):
        if "cli" not in f.metadata:
            assert "--" + f.name.replace("_", "-") not in entries, f.name


def test_each_generated_flag_sets_its_field():
    default = Self2SegConfig()
    for f in P.CLI_FIELDS:
        flag, v = P.flag_name(f), getattr(default, f.name)
        if f.type == "bool":
            argv, want = [("--no-" + flag[2:]) if v else flag], not v
        elif f.name in P.CHOICES:
            want = next(c for c in P.CHOICES[f.name] if c != v)
            argv = [flag, want]
        elif f.type == "float":
            want = 2 * v if v else 1.5  # a default of 0 (refine_min_cnr) must move too
            argv = [flag, repr(want)]
        else:  # int: stay odd for the odd-only sizes (refine_size: 0 = off, else odd >= 3)
            want = v + 2 if v else 3
            argv = [flag, str(want)]
        cfg, extra = _config(["segment", "a.tif", "-o", "o", *argv])
        assert cfg == default.replace(**{f.name: want}), f.name
        assert type(getattr(cfg, f.name)) is type(v), f.name
        assert extra == {}


def test_help_does_not_import_jax():
    """``--help`` must answer at once: neither it nor importing the CLI may import JAX."""
    code = textwrap.dedent("""
        import sys
        from self2seg_jax import cli
        assert cli.main(["--help"]) == 0
        assert cli.main(["segment", "--help"]) == 0
        assert cli.main(["demo", "--help"]) == 0
        assert cli.main(["--version"]) == 0
        heavy = sorted(m for m in ("jax", "jaxlib", "flax", "optax") if m in sys.modules)
        assert not heavy, f"imported by --help: {heavy}"
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "usage: self2seg" in p.stdout


# ------------------------------------------------------------------------------- configuration


def test_defaults_without_flags_or_toml():
    cfg, extra = _config(["segment", "a.tif", "-o", "o"])
    assert cfg == Self2SegConfig() and extra == {}
    cfg, extra = _config(["demo", "-o", "o"])
    assert cfg == Self2SegConfig() and extra == {}


def test_config_flags_toml_and_precedence(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(CHEAP_TOML + 'lam = 0.07\nmu = 0\nseed = 5\ninit = 0.4\n'
                    'fg_box = [[1, 2, 10, 12]]\nbg_box = [[20, 20, 30, 30], [0, 0, 3, 3]]\n')
    cfg, extra = _config(["segment", "a.tif", "-o", "o", "--config", toml, "--lam", "0.01",
                          "--data-filter", "3"])
    assert cfg.lam == 0.01  # flag beats TOML
    assert cfg.mu == 0.0 and isinstance(cfg.mu, float)  # TOML integer -> float field
    assert (cfg.net_width, cfg.net_depth) == (8, 1)
    assert (cfg.train_max_steps, cfg.train_min_steps, cfg.train_patience) == (30, 10, 10)
    assert (cfg.val_every, cfg.n_average, cfg.init_denoise) == (10, 2, False)
    assert cfg.data_filter == 3
    # fields neither file nor flags set keep the defaults
    d = Self2SegConfig()
    assert (cfg.fg_expert, cfg.bg_expert, cfg.learning_rate) == (d.fg_expert, d.bg_expert,
                                                                  d.learning_rate)
    assert extra["seed"] == 5 and extra["init"] == 0.4
    assert extra["fg_box"] == [(1, 2, 10, 12)] and len(extra["bg_box"]) == 2
    # without the flag the TOML value stands
    cfg, _ = _config(["segment", "a.tif", "-o", "o", "--config", toml])
    assert cfg.lam == 0.07 and cfg.data_filter == 1

    cfg, _ = _config(
        ["segment", "a.tif", "-o", "o", "--net-width", "8", "--net-depth", "2", "--train-steps",
         "300", "--max-outer", "2", "--pd-max-iter", "300", "--mu", "0.001", "--fg-expert",
         "linear", "--bg-expert", "constant", "--linear-size", "5", "--learning-rate", "0.01",
         "--init-denoise", "--data-term", "blind_spot"])
    assert cfg.data_term == "blind_spot"
    assert (cfg.net_width, cfg.net_depth, cfg.train_max_steps, cfg.max_outer, cfg.pd_max_iter) == (
        8, 2, 300, 2, 300)
    assert (cfg.fg_expert, cfg.bg_expert) == ("linear", "constant")
    assert (cfg.linear_size, cfg.mu) == (5, 0.001)
    assert cfg.learning_rate == 0.01 and cfg.init_denoise is True


def test_paper_then_toml_then_flags(tmp_path):
    paper = Self2SegConfig.paper()
    cfg, _ = _config(["demo", "-o", "o", "--paper"])
    assert cfg == paper and (cfg.net_width, cfg.net_depth) == (64, 8)
    (tmp_path / "p.toml").write_text("paper = true\nmax_outer = 3\nlam = 0.02\n")
    cfg, extra = _config(["demo", "-o", "o", "--config", tmp_path / "p.toml"])
    assert cfg == paper.replace(max_outer=3, lam=0.02)  # TOML beats --paper's values
    assert "paper" not in extra
    cfg, _ = _config(["demo", "-o", "o", "--config", tmp_path / "p.toml", "--max-outer", "4"])
    assert cfg == paper.replace(max_outer=4, lam=0.02)  # flags beat both
    (tmp_path / "q.toml").write_text("max_outer = 3\n")
    cfg, _ = _config(["demo", "-o", "o", "--paper", "--config", tmp_path / "q.toml"])
    assert cfg == paper.replace(max_outer=3)  # --paper with a TOML without 'paper'
    cfg, _ = _config(["demo", "-o", "o", "--config", tmp_path / "q.toml"])
    assert cfg == Self2SegConfig(max_outer=3)


def test_preset_flag_and_toml_key(tmp_path):
    """--preset NAME (and the TOML key 'preset') start from Self2SegConfig.preset(NAME); flags
    still win; two different presets named at once are an error, not a silent choice."""
    tex = Self2SegConfig.textures()
    cfg, _ = _config(["demo", "-o", "o", "--preset", "textures"])
    assert cfg == tex and (cfg.bg_expert, cfg.data_term) == ("n2f", "blind_spot")
    cfg, _ = _config(["demo", "-o", "o", "--preset", "textures", "--lam", "0.06"])
    assert cfg == tex.replace(lam=0.06)
    assert _config(["demo", "-o", "o", "--preset", "paper"])[0] == Self2SegConfig.paper()
    assert _config(["demo", "-o", "o", "--preset", "nuclei"])[0] == Self2SegConfig()
    (tmp_path / "t.toml").write_text('preset = "textures"\nmax_outer = 3\n')
    cfg, extra = _config(["demo", "-o", "o", "--config", tmp_path / "t.toml"])
    assert cfg == tex.replace(max_outer=3) and "preset" not in extra
    # the same preset twice is fine; two different ones are refused
    assert _config(["demo", "-o", "o", "--preset", "textures", "--config",
                    tmp_path / "t.toml"])[0] == tex.replace(max_outer=3)
    with pytest.raises(P.CLIError, match="conflicting presets: paper, textures"):
        _config(["demo", "-o", "o", "--paper", "--config", tmp_path / "t.toml"])
    (tmp_path / "bad.toml").write_text('preset = "cells"\n')
    with pytest.raises(P.CLIError, match="'preset' must be one of nuclei, textures, paper"):
        _config(["demo", "-o", "o", "--config", tmp_path / "bad.toml"])
    with pytest.raises(SystemExit):
        _config(["demo", "-o", "o", "--preset", "cells"])


def test_toml_init_is_relative_to_the_toml_file(tmp_path):
    sub = tmp_path / "cfg"
    sub.mkdir()
    (sub / "a.toml").write_text('init = "start.tif"\n')
    _, extra = _config(["segment", "x.tif", "-o", "o", "--config", sub / "a.toml"])
    assert extra["init"] == str(sub / "start.tif")
    (sub / "b.toml").write_text('init = "otsu"\n')
    assert _config(["segment", "x.tif", "-o", "o", "--config", sub / "b.toml"])[1]["init"] == "otsu"
    (sub / "d.toml").write_text('init = "otsu_dark"\n')  # a start by name, not a file
    assert _config(["segment", "x.tif", "-o", "o", "--config", sub / "d.toml"])[1]["init"] == "otsu_dark"
    (sub / "c.toml").write_text('init = "0.3"\n')  # a threshold written as a string stays one
    assert _config(["segment", "x.tif", "-o", "o", "--config", sub / "c.toml"])[1]["init"] == "0.3"


def test_train_steps_flag_keeps_schedule_consistent():
    cfg, _ = _config(["segment", "a.tif", "-o", "o", "--train-steps", "30"])
    assert cfg.train_max_steps == 30
    assert cfg.train_min_steps <= cfg.train_max_steps


@pytest.mark.parametrize("text,words", [
    ("lam = [1", ["invalid TOML"]),
    ("nonsense = 1", ["unknown option 'nonsense'", "known:"]),
    ('lam = "big"', ["'lam' must be a number"]),
    ("net_width = 8.5", ["'net_width' must be an integer"]),
    ("net_width = true", ["'net_width' must be an integer"]),
    ("init_denoise = 1", ["'init_denoise' must be true or false"]),
    ('fg_expert = 1', ["'fg_expert' must be a string"]),
    ("lam = -1.0", ["lam must be a finite number > 0"]),
    ("data_filter = 2", ["data_filter must be an odd integer"]),
    ('fg_expert = "unet"', ["fg_expert must be one of"]),
    ("fg_box = [[1, 2, 3]]", ["'fg_box' must be a list"]),
    ('seed = "x"', ["'seed' must be an integer"]),
    ("init = true", ["'init' must be"]),
    ("paper = 1", ["'paper' must be true or false"]),
    ("progress = true", ["'progress' is set on the command line"]),
])
def test_bad_config_file(tmp_path, capfd, text, words):
    toml = tmp_path / "bad.toml"
    toml.write_text(text + "\n")
    img = write_image(tmp_path)
    rc, out, err = run(["segment", img, "-o", tmp_path / "out", "--config", toml], capfd)
    assert_one_line_error(rc, err, toml, *words)
    assert out == ""
    assert files(tmp_path / "out") == []
    with pytest.raises(cli.CLIError, match=re.escape(words[0])):
        _config(["segment", img, "-o", tmp_path / "out", "--config", toml])


def test_config_file_missing_or_a_directory(tmp_path, capfd):
    img = write_image(tmp_path)
    out = tmp_path / "out"
    rc, _, err = run(["segment", img, "-o", out, "--config", tmp_path / "missing.toml"], capfd)
    assert_one_line_error(rc, err, "missing.toml", "not found")
    rc, _, err = run(["demo", "-o", out, "--config", tmp_path], capfd)
    assert_one_line_error(rc, err, tmp_path, "is a directory")
    assert files(out) == []


def test_bad_option_values(tmp_path, capfd):
    img = write_image(tmp_path)
    out = tmp_path / "out"
    for extra, words in [(["--lam", "-1"], ["invalid option", "lam must be a finite number > 0"]),
                         (["--lam", "nan"], ["lam"]),
                         (["--data-filter", "4"], ["data_filter"]),
                         (["--linear-size", "0"], ["linear_size"]),
                         (["--max-outer", "0"], ["max_outer"])]:
        rc, _, err = run(["segment", img, "-o", out] + extra, capfd)
        assert_one_line_error(rc, err, *words)
    # a valid TOML with an invalid flag: the flag is blamed, not the file
    (tmp_path / "ok.toml").write_text("lam = 0.02\n")
    rc, _, err = run(["segment", img, "-o", out, "--config", tmp_path / "ok.toml", "--mu", "-1"],
                     capfd)
    line = assert_one_line_error(rc, err, "invalid option", "mu must be >= 0")
    assert "ok.toml" not in line
    assert files(out) == []


def test_progress_training_flag_reaches_the_config(tmp_path):
    img = write_image(tmp_path)
    assert _config(["segment", img, "-o", tmp_path / "o", "--progress-training"])[0].progress_training
    assert not _config(["segment", img, "-o", tmp_path / "o"])[0].progress_training
