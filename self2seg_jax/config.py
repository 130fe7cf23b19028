"""User-facing configuration of Self2Seg: :class:`Self2SegConfig`.

The image is min–max normalised to ``[0, 1]`` inside :func:`self2seg_jax.segment`, and the
energy (paper eq. (5)) **sums** squared residuals over pixels. ``lam`` is therefore the price
of one pixel of boundary length measured in squared ``[0, 1]`` intensity: a pixel joins the
foreground when its foreground expert's squared error is lower than the background expert's
by more than ``lam`` times the boundary it adds. Useful values are about ``0.005 .. 0.1``;
larger ``lam`` gives smoother, blob-like masks, smaller ``lam`` follows the noise. With the
mean-filtered data terms (``data_filter > 1``) the residuals are smaller, so smaller ``lam``
values play the role of larger unfiltered ones.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax.numpy as jnp

from self2seg_jax import alternating, experts, ops


@dataclasses.dataclass(frozen=True)
class Self2SegConfig:
    """Options of :func:`self2seg_jax.segment` (frozen, hashable).

    Numbers one sweeps (``lam``, ``mu``, ``learning_rate``, ``pd_tol``, ``mask_tol``,
    ``energy_p``, ``threshold``) are passed to the compiled scheme as traced values: changing
    them never recompiles. Everything else fixes shapes or code paths and is static.

    Attributes:
      lam: TV weight (> 0), see the module docstring for its scale.
      mu: weight of the reference-mask term ``mu/2 ||u - u_prev||^2`` (eq. (10), Alg. 3/4);
        0 disables it. Small values (1e-4 .. 1e-2) keep the mask from drifting to a trivial one.
      fg_expert, bg_expert: ``"n2f"`` (CNN), ``"linear"`` (one filter, exact least squares) or
        ``"constant"`` (region mean, Chan–Vese).
      data_filter: odd size of the mean filter ``K_sigma`` applied to the residuals before
        squaring (paper Example 1, used at noise levels 30/50); 1 = no filter.
      net_width, net_depth: CNN channels and number of 3x3 conv layers. The paper's net is
        64 channels x 8 layers (``Self2SegConfig.paper()``); the default 32 x 4 is ~10x cheaper.
      linear_size: odd filter size of the linear expert (paper Fig. 1: 15).
      learning_rate: Adam step size for CNN experts.
      train_max_steps, train_min_steps, train_patience, val_every, n_average: Noise2Fast
        training schedule per W-step (see :class:`self2seg_jax.experts.TrainConfig`).
      warm_start: keep expert weights across outer iterations (True) or re-initialise them
        every W-step as the authors' code does (False).
      max_outer: cap on outer iterations.
      mask_tol: stop when at most this fraction of pixels changes label.
      energy_p: the paper's stopping rule (§5): stop when the energy decrease is below
        ``energy_p`` times the previous decrease (or the energy rises); 0 disables it.
      threshold: tau of Theorem 4 for the final mask ``u >= tau``.
      pd_tol, pd_max_iter, pd_check_every: primal–dual relative-gap tolerance, iteration cap
        and gap-check interval.
      pd_accelerated: with ``mu > 0`` use the accelerated Chambolle–Pock steps of the paper's
        Alg. 4 (``theta = 1/sqrt(1 + 2 mu tau)``); off by default because on these problems
        the plain fixed-step iteration reaches a given gap in far fewer iterations (measured).
      isotropic_tv: isotropic TV (paper) or anisotropic TV (exact thresholding theorem).
      data_term: ``"output"`` (paper: ``(f - D(f))^2`` with the expert's output) or
        ``"blind_spot"``: ``(f - D_J(f))^2`` with the expert applied to the checkerboard halves
        it was trained on (:func:`self2seg_jax.experts.blind_spot_output`), so the prediction at
        a pixel never sees that pixel's noise. With ``"output"`` an expert that passes more
        noise through gets a *lower* residual, which can hand the whole image to one of two
        CNN experts; the blind-spot residual estimates the expert's true error plus the
        (common) noise variance. Two-class scheme only; the denoised output is unchanged.
      init_denoise: for ``init="otsu"`` or a float threshold, threshold the Noise2Fast-denoised
        image (the paper's DSB2018 protocol) rather than the noisy one.
      conv_impl: ``"auto"`` (``"loopsafe"`` on CPU, ``"lax"`` on GPU/TPU), ``"lax"``,
        ``"loopsafe"`` — see :func:`self2seg_jax.ops.conv2d_loopsafe`.
      stack_experts: ``"auto"`` (vmap same-kind experts on GPU/TPU, sequential on CPU where the
        batched convolution is slower), ``"always"`` or ``"never"``.
      progress: print one line per outer iteration from inside the compiled loop.
    """

    lam: float = 0.03
    mu: float = 0.01
    fg_expert: str = "n2f"
    bg_expert: str = "constant"
    data_filter: int = 1
    net_width: int = 32
    net_depth: int = 4
    linear_size: int = 15
    learning_rate: float = 1e-3
    train_max_steps: int = 400
    train_min_steps: int = 100
    train_patience: int = 100
    val_every: int = 10
    n_average: int = 10
    warm_start: bool = True
    max_outer: int = 8
    mask_tol: float = 1e-3
    energy_p: float = 0.15
    threshold: float = 0.5
    pd_tol: float = 1e-4
    pd_max_iter: int = 3000
    pd_check_every: int = 10
    pd_accelerated: bool = False
    isotropic_tv: bool = True
    init_denoise: bool = True
    conv_impl: str = "auto"
    stack_experts: str = "auto"
    progress: bool = False
    data_term: str = "output"

    # Defaults (measured, see benchmarks/tradeoff_dsb.py and the issue notes): a CNN foreground
    # expert against a constant background (the paper's DSB2018 n10 setting) with a small
    # reference-mask weight mu; two CNN experts without mu let one expert explain both regions.

    @classmethod
    def paper(cls, **overrides) -> Self2SegConfig:
        """The paper's / authors' configuration: 64-channel 8-layer Noise2Fast experts,
        re-initialised every W-step, validation after every step with patience 100, output
        averaged over the last 100 validations, 8000 primal–dual iterations at most."""
        base = dict(
            mu=0.0,
            fg_expert="n2f",
            bg_expert="n2f",
            net_width=64,
            net_depth=8,
            train_max_steps=3000,
            train_min_steps=100,
            train_patience=100,
            val_every=1,
            n_average=100,
            warm_start=False,
            max_outer=10,
            pd_max_iter=8000,
            pd_tol=1e-5,
            pd_accelerated=True,
        )
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes) -> Self2SegConfig:
        return dataclasses.replace(self, **changes)

    # -- internal -------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid option."""
        def bad(msg):
            raise ValueError(f"Self2SegConfig: {msg}")

        for name in ("lam", "mu", "learning_rate", "mask_tol", "energy_p", "threshold", "pd_tol"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                bad(f"{name} must be a finite real number, got {v!r}")
        for name in ("data_filter", "linear_size", "net_width", "net_depth", "train_max_steps",
                     "train_min_steps", "train_patience", "val_every", "n_average", "max_outer",
                     "pd_max_iter", "pd_check_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                bad(f"{name} must be an integer, got {v!r}")
        for name in ("warm_start", "isotropic_tv", "init_denoise", "progress", "pd_accelerated"):
            if not isinstance(getattr(self, name), bool):
                bad(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not self.lam > 0:
            bad(f"lam must be a finite number > 0, got {self.lam!r}")
        if not (math.isfinite(self.mu) and self.mu >= 0):
            bad(f"mu must be >= 0, got {self.mu!r}")
        for name in ("fg_expert", "bg_expert"):
            if getattr(self, name) not in experts.EXPERT_KINDS:
                bad(f"{name} must be one of {experts.EXPERT_KINDS}, got {getattr(self, name)!r}")
        for name in ("data_filter", "linear_size"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1 and v % 2 == 1):
                bad(f"{name} must be an odd integer >= 1, got {v!r}")
        for name in ("net_width", "net_depth", "train_max_steps", "val_every", "n_average",
                     "max_outer", "pd_max_iter", "pd_check_every"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                bad(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("train_min_steps", "train_patience"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 0):
                bad(f"{name} must be an integer >= 0, got {v!r}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            bad(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not (0 < self.threshold < 1):
            bad(f"threshold must be in (0, 1), got {self.threshold!r}")
        if not (self.pd_tol > 0):
            bad(f"pd_tol must be > 0, got {self.pd_tol!r}")
        if not (0 <= self.mask_tol < 1):
            bad(f"mask_tol must be in [0, 1), got {self.mask_tol!r}")
        if not (0 <= self.energy_p <= 1):
            bad(f"energy_p must be in [0, 1], got {self.energy_p!r}")
        if self.conv_impl not in ("auto", "lax", "loopsafe"):
            bad(f"conv_impl must be 'auto', 'lax' or 'loopsafe', got {self.conv_impl!r}")
        if self.data_term not in ("output", "blind_spot"):
            bad(f"data_term must be 'output' or 'blind_spot', got {self.data_term!r}")
        if self.stack_experts not in ("auto", "always", "never"):
            bad(f"stack_experts must be 'auto', 'always' or 'never', got {self.stack_experts!r}")

    def train_config(self, kind: str) -> experts.TrainConfig:
        impl = ops.default_conv_impl() if self.conv_impl == "auto" else self.conv_impl
        return experts.TrainConfig(
            kind=kind,
            width=self.net_width,
            depth=self.net_depth,
            linear_size=self.linear_size,
            max_steps=self.train_max_steps,
            min_steps=self.train_min_steps,
            patience=self.train_patience,
            val_every=self.val_every,
            n_average=self.n_average,
            conv_impl=impl,
        )

    def static(self) -> alternating.SchemeStatic:
        import jax

        stack = {
            "always": True,
            "never": False,
            "auto": jax.default_backend() != "cpu",
        }[self.stack_experts]
        return alternating.SchemeStatic(
            fg=self.train_config(self.fg_expert),
            bg=self.train_config(self.bg_expert),
            data_filter=self.data_filter,
            max_outer=self.max_outer,
            warm_start=self.warm_start,
            pd_max_iter=self.pd_max_iter,
            pd_check_every=self.pd_check_every,
            pd_accelerated=self.pd_accelerated,
            isotropic_tv=self.isotropic_tv,
            stack_experts=stack,
            progress=self.progress,
            blind_spot=self.data_term == "blind_spot",
        )

    def hyper(self) -> alternating.Hyper:
        f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
        return alternating.Hyper(
            lam=f32(self.lam),
            mu=f32(self.mu),
            learning_rate=f32(self.learning_rate),
            pd_tol=f32(self.pd_tol),
            mask_tol=f32(self.mask_tol),
            energy_p=f32(self.energy_p),
            threshold=f32(self.threshold),
        )
