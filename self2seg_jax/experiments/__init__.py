"""Reproductions of the paper's experiments (library code behind ``benchmarks/reproduce_*.py``).

* :mod:`self2seg_jax.experiments.dsb2018` — DSB2018 nuclei, three noise levels, Chan–Vese /
  sequential / Self2Seg, per-image oracle and honest lambda protocols (paper Table 1, Fig. 5–7).
* :mod:`self2seg_jax.experiments.textures` — equal-mean textures (Fig. 8, 9) and the stripes
  toy with linear experts (Fig. 1).
"""
