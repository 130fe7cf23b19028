"""Reproductions of the paper's experiments (the code behind ``benchmarks/reproduce_*.py``; not
part of the installed package — ``benchmarks/`` is on ``sys.path`` when those scripts run, and
``pyproject.toml`` puts it there for the tests).

* :mod:`experiments.dsb2018` — DSB2018 nuclei, three noise levels, Chan–Vese / sequential /
  Self2Seg, per-image oracle and honest lambda protocols (paper Table 1, Fig. 5–7).
* :mod:`experiments.textures` — equal-mean textures (Fig. 8, 9) and the stripes toy with
  linear experts (Fig. 1).
"""
