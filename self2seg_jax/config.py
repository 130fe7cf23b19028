"""User-facing configuration of Self2Seg: :class:`Self2SegConfig`, the one place where every
setting is declared, checked and documented.

The image is scaled to ``[0, 1]`` inside :func:`self2seg_jax.segment` (its 0.1 and 99.9
percentiles, beyond clipped; ``normalise="minmax"``: min and max, as the paper), and the
energy (paper eq. (5)) **sums** squared residuals over pixels. ``lam`` is therefore the price
of one pixel of boundary length measured in squared ``[0, 1]`` intensity: a pixel joins the
foreground when its foreground expert's squared error is lower than the background expert's
by more than ``lam`` times the boundary it adds. Useful values are about ``0.005 .. 0.1``;
larger ``lam`` gives smoother, blob-like masks, smaller ``lam`` follows the noise. With the
mean-filtered data terms (``data_filter > 1``) the residuals are smaller, so smaller ``lam``
values play the role of larger unfiltered ones.
``lam="auto"`` chooses the value per image from the noise of its own data terms after the first
W-step (:mod:`self2seg_jax.lam_auto`; the result's ``lam`` records it).

Engine structures are derived here and nowhere else: :meth:`Self2SegConfig.spec` (the static
:class:`~self2seg_jax.alternating.Spec`), :meth:`Self2SegConfig.hyper` (the traced numbers) and
:func:`backend_policy` (choices that depend on the accelerator). The command line builds its
flags and help texts from the fields' ``cli`` metadata. This module imports no JAX at import
time, so ``self2seg --help`` stays instant.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers

EXPERT_KINDS = ("n2f", "linear", "constant", "smooth")
CHOICES = {
    "fg_expert": EXPERT_KINDS,
    "bg_expert": EXPERT_KINDS,
    "conv_impl": ("auto", "lax", "loopsafe"),
    "net_conv3d": ("full", "factorised"),
    "stack_experts": ("auto", "always", "never"),
    "data_term": ("output", "blind_spot"),
    "train_mode": ("crops", "full"),
    "normalise": ("quantile", "minmax"),
}


def _opt(default, help: str, flag: str | None = None, metavar: str | None = None, cli: bool = True):
    """A config field; with ``cli`` it becomes a command-line flag (``--name-with-dashes``)."""
    meta = {"help": help}
    if cli:
        meta["cli"] = {"flag": flag, "metavar": metavar}
    return dataclasses.field(default=default, metadata=meta)


@functools.cache
def backend_policy(backend: str | None = None) -> dict:
    """Choices that depend on the accelerator, decided in this one place.

    On CPU the experts' convolutions use :func:`self2seg_jax.ops.conv_loopsafe` (XLA:CPU's
    convolution gradients are 10–20x slower inside compiled loops) and experts of one kind are
    trained one after the other (``"map"``: batched convolutions are slower there); on GPU/TPU
    XLA's convolution and a ``vmap`` over the experts. Crop training takes 2 crops per Adam step
    on CPU (its cost is per pixel there) and 16 on accelerators (a step's cost there is mostly
    launch overhead, so more pixels per step are nearly free). On CPU the mask step iterates
    large images in bands of 2^18 pixels (:class:`self2seg_jax.pdhg.Problem`: same iterates,
    computed in cache; 2.3x the iterations per second at 2048^2; volumes only where a band
    holds at least 22 core slices). XLA compiler options (XLA:CPU's
    YNNPACK fusions off on CPUs without AVX-512) are decided by
    :func:`self2seg_jax.backend.compiler_options`, which every compiled entry point applies.
    """
    if backend is None:
        import jax

        backend = jax.default_backend()
    cpu = backend == "cpu"
    return {"conv_impl": "loopsafe" if cpu else "lax", "batch": "map" if cpu else "vmap",
            "crop_batch": 2 if cpu else 16, "pd_block_pixels": 2**18 if cpu else 0}


PRESETS = ("nuclei", "textures", "paper")
# The CNN experts' size, Adam step and training schedule the textures preset was measured with
# (the defaults'); the preset carries them so that a change of the defaults cannot silently
# change it.
CNN_TEXTURES = dict(net_width=32, learning_rate=1e-3, train_max_steps=150, train_min_steps=50,
                    train_patience=50)


def _side(side_2d: int, ndim: int) -> int:
    """The even side of an ``ndim``-D cube with about as many pixels as a ``side_2d`` square."""
    return max(4, 2 * round(side_2d ** (2 / ndim) / 2))


@dataclasses.dataclass(frozen=True)
class Self2SegConfig:
    """Options of :func:`self2seg_jax.segment` (frozen, hashable, checked on construction).

    Numbers one sweeps (``lam``, ``mu``, ``learning_rate``, ``pd_tol``, ``mask_tol``,
    ``energy_p``, ``threshold``) reach the compiled scheme as traced values: changing them
    never recompiles. Everything else fixes shapes or code paths and is static. Each field's
    description is in ``dataclasses.fields(Self2SegConfig)[i].metadata["help"]`` (also shown
    by ``self2seg segment --help``).
    """

    lam: float | str = _opt(0.03, "TV weight lambda (> 0) on the [0, 1]-normalised image; about "
                            "0.005..0.1, larger = smoother; auto = chosen per image from its "
                            "noise (self2seg_jax.lam_auto; the result records the value)",
                            metavar="LAM|auto")
    normalise: str = _opt("quantile", "intensity scaling to [0, 1]: the 0.1/99.9 percentiles, "
                          "beyond clipped (quantile: lam then means the same on patches and "
                          "whole images) or min and max (minmax, the paper)")
    mu: float = _opt(0.01, "reference-mask weight mu (eq. (10)); 0 = off. Small values keep the "
                     "mask from drifting to a trivial one", metavar="MU")
    fg_expert: str = _opt("n2f", "foreground expert: CNN (n2f), linear filter, region mean "
                          "(constant) or region local mean (smooth)")
    bg_expert: str = _opt("constant", "background expert: CNN (n2f), linear filter, region mean "
                          "(constant) or region local mean (smooth: uneven backgrounds)")
    data_filter: int = _opt(1, "odd mean-filter size K for the data terms (paper Example 1; 3 at "
                            "high noise); 1 = off", metavar="K")
    data_term: str = _opt("output", "experts' residuals from their outputs (paper) or from "
                          "blind-spot predictions that never see the pixel's own noise")
    net_width: int = _opt(32, "CNN expert channels (the paper's net: 64)", metavar="C")
    net_depth: int = _opt(4, "CNN expert 3x3 conv layers (the paper's net: 8)", metavar="L")
    net_conv3d: str = _opt("full", "CNN experts' layers on volumes: full 3x3x3 convolutions or "
                           "factorised ones (3x3 in-plane, then 3 taps along z: 0.44x the "
                           "multiply-adds; lower Dice on fresh synthetic volumes, so not the "
                           "default)")
    smooth_size: int = _opt(15, "odd window side of smooth experts' local mean", metavar="K")
    refine_size: int = _opt(15, "after the scheme, a local Chan-Vese mask step (refine_iters of "
                            "them) started from its mask: each class's data term from its local "
                            "mean (leave-one-out, odd window W); sets boundaries midway between "
                            "the local levels; 0 = off", metavar="W")
    refine_iters: int = _opt(1, "outer iterations of the refinement (local means recomputed "
                             "from its mask each time; fewer when the mask settles)",
                             metavar="N")
    refine_min_cnr: float = _opt(2.2, "refine only when the scheme's classes stand at least this "
                                 "many noise stds apart (median gap over a robust noise std, "
                                 "api.contrast_to_noise); 0 = always", metavar="T")
    linear_size: int = _opt(15, "odd filter size of linear experts (paper Fig. 1: 15)",
                            metavar="K")
    learning_rate: float = _opt(1e-3, "Adam step size of CNN experts (the paper: 1e-3)",
                                metavar="LR")
    train_max_steps: int = _opt(150, "max Adam steps per expert training", flag="--train-steps",
                                metavar="N")
    train_min_steps: int = _opt(50, "Adam steps always taken before early stopping (at most "
                                "train_max_steps)", cli=False)
    train_patience: int = _opt(50, "stop training when the validation score has not improved "
                               "for this many steps", cli=False)
    val_every: int = _opt(10, "Adam steps between validations (train_mode full: the whole "
                          "image; crops: the fixed validation crops)", cli=False)
    n_average: int = _opt(10, "number of last validations averaged into an expert's output "
                          "(full: their outputs, as Noise2Fast; crops: their parameters)",
                          cli=False)
    train_mode: str = _opt("crops", "expert training: on crops with a fixed pixel budget per step "
                           "(crops; cost independent of the image size) or on whole checkerboard "
                           "half-images (full; Noise2Fast)")
    crop_size: int = _opt(32, "side of a training crop in 2-D (volumes: crops with as many "
                          "voxels)", cli=False)
    crop_batch: int = _opt(0, "training crops per Adam step; 0 = backend policy (2 on CPU, "
                           "16 on accelerators)", cli=False)
    val_crops: int = _opt(16, "crops in the fixed validation set of crop training", cli=False)
    tile_size: int = _opt(512, "side of the tiles of whole-image expert passes in 2-D (volumes: "
                          "tiles with as many voxels); bounds their memory", cli=False)
    warm_start: bool = _opt(True, "keep expert weights across outer iterations (False: "
                            "re-initialise every W-step, as the authors' code)", cli=False)
    max_outer: int = _opt(8, "max outer iterations", metavar="N")
    mask_tol: float = _opt(1e-3, "stop when at most this fraction of pixels changes label",
                           cli=False)
    energy_p: float = _opt(0.15, "paper's stopping rule: stop when the energy decrease is below "
                           "energy_p x the previous one (or the energy rises); 0 = off", cli=False)
    threshold: float = _opt(0.5, "tau of Theorem 4: the two-class mask is u >= tau", cli=False)
    pd_tol: float = _opt(1e-4, "primal-dual relative-gap tolerance of the mask step", cli=False)
    pd_max_iter: int = _opt(3000, "max primal-dual iterations per mask step", metavar="N")
    pd_check_every: int = _opt(10, "primal-dual iterations between gap checks", cli=False)
    pd_accelerated: bool = _opt(False, "with mu > 0, the accelerated steps of the paper's Alg. 4 "
                                "(off: the fixed steps reach a given gap in fewer iterations "
                                "here)", cli=False)
    isotropic_tv: bool = _opt(True, "isotropic TV (paper) or anisotropic TV (exact thresholding "
                              "theorem)", cli=False)
    init_denoise: bool = _opt(False, "for Otsu / threshold starts, threshold the "
                              "Noise2Fast-denoised image (the paper's DSB2018 protocol)")
    conv_impl: str = _opt("auto", "convolution of CNN experts: auto (backend policy), lax or "
                          "loopsafe", cli=False)
    stack_experts: str = _opt("auto", "train same-kind experts batched (always), one after the "
                              "other (never) or by the backend policy (auto)", cli=False)
    progress: bool = _opt(False, "print one line per outer iteration to stderr (a progress= "
                          "callback of segment replaces the printer)", cli=False)
    progress_training: bool = _opt(False, "report expert-training steps from inside the "
                                   "compiled loop (progress.training_listener; CLI: a live "
                                   "line on a terminal). Such programs are never stored in "
                                   "the persistent compilation cache")

    def __post_init__(self):
        self.validate()
        if self.train_min_steps > self.train_max_steps:  # a floor cannot exceed the cap
            object.__setattr__(self, "train_min_steps", self.train_max_steps)

    @classmethod
    def paper(cls, **overrides) -> Self2SegConfig:
        """The authors' code's configuration, read as **two CNN experts** (the paper's
        "reading B"): min–max normalisation, the Otsu start of the Noise2Fast-denoised image,
        whole-image training of two 64-channel 8-layer experts (Adam step 1e-3),
        re-initialised every W-step,
        validation after every step with patience 100, output averaged over the last 100
        validations, up to 8000 primal–dual iterations, no reference-mask term (mu = 0), no
        data filter.

        The paper's DSB2018 experiment (§5) is ambiguous about the background: "reading A" is
        a CNN foreground expert on a constant background with 3x3 mean-filtered data terms at
        noise > 10 (``paper(bg_expert="constant", data_filter=3)``). The evaluation protocol
        (``benchmarks/protocols/dsb2018_v2.toml``) reports both readings, with the library's
        smaller nets and crop training, as ``s2s_cnn_const`` (A) and ``s2s_two_cnn`` (B)."""
        base = dict(mu=0.0, fg_expert="n2f", bg_expert="n2f", net_width=64, net_depth=8,
                    learning_rate=1e-3,
                    normalise="minmax", train_mode="full", init_denoise=True,
                    train_max_steps=3000, train_min_steps=100, train_patience=100, val_every=1,
                    n_average=100, warm_start=False, max_outer=10, pd_max_iter=8000, pd_tol=1e-5,
                    pd_accelerated=True)
        return cls(**{**base, **overrides})

    @classmethod
    def nuclei(cls, **overrides) -> Self2SegConfig:
        """The defaults (``preset("nuclei")``): objects brighter or darker than a flat
        background."""
        return cls.preset("nuclei", **overrides)

    @classmethod
    def textures(cls, **overrides) -> Self2SegConfig:
        """``preset("textures")``: regions that differ in texture, not in mean."""
        return cls.preset("textures", **overrides)

    @classmethod
    def preset(cls, name: str, **overrides) -> Self2SegConfig:
        """A named starting point: ``"nuclei"`` (the defaults: a CNN foreground expert on a
        constant background — objects brighter or darker than a flat background),
        ``"textures"`` (two CNN experts, blind-spot data terms, ``mu = 0`` and a tighter
        primal–dual tolerance and cap, ``1e-5`` / 20000 iterations, because two similar experts
        give weak data terms, and the 32-channel experts and training schedule it was measured
        with (:data:`CNN_TEXTURES`) — regions that differ in texture, not in mean; measured on
        the three texture pairs x two geometries x two noise levels of
        ``benchmarks/textures_preset.py``: mean Dice 0.79 against 0.51 for the then defaults, 9 wins
        of 12, but grass|gravel fails in 3 of its 4 images) or ``"paper"`` (:meth:`paper`)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {PRESETS}")
        if name == "paper":
            return cls.paper(**overrides)
        base = {"nuclei": {},
                "textures": dict(bg_expert="n2f", data_term="blind_spot", mu=0.0, pd_tol=1e-5,
                                 pd_max_iter=20000, **CNN_TEXTURES)}
        return cls(**{**base[name], **overrides})

    def replace(self, **changes) -> Self2SegConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid option (run on construction)."""
        def bad(msg):
            raise ValueError(f"Self2SegConfig: {msg}")

        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "lam" and isinstance(v, str):
                if v != "auto":
                    bad(f"lam must be a number > 0 or 'auto', got {v!r}")
                continue
            kind = f.type if isinstance(f.type, str) else f.type.__name__
            kind = "float" if kind == "float | str" else kind  # lam: a number unless "auto"
            if kind == "bool" and not isinstance(v, bool):
                bad(f"{f.name} must be True or False, got {v!r}")
            if kind == "int" and (isinstance(v, bool) or not isinstance(v, numbers.Integral)):
                bad(f"{f.name} must be an integer, got {v!r}")
            if kind == "float" and (isinstance(v, bool) or not isinstance(v, numbers.Real)
                                    or not math.isfinite(v)):
                bad(f"{f.name} must be a finite real number, got {v!r}")
            if f.name in CHOICES and v not in CHOICES[f.name]:
                bad(f"{f.name} must be one of {CHOICES[f.name]}, got {v!r}")
        if self.lam != "auto" and not self.lam > 0:
            bad(f"lam must be a finite number > 0 or 'auto', got {self.lam!r}")
        if not self.mu >= 0:
            bad(f"mu must be >= 0, got {self.mu!r}")
        for name in ("data_filter", "linear_size", "smooth_size"):
            if not (getattr(self, name) >= 1 and getattr(self, name) % 2 == 1):
                bad(f"{name} must be an odd integer >= 1, got {getattr(self, name)!r}")
        if not (self.refine_size == 0 or (self.refine_size >= 3 and self.refine_size % 2 == 1)):
            bad(f"refine_size must be 0 (off) or an odd integer >= 3, got {self.refine_size!r}")
        if not (self.refine_min_cnr >= 0 and math.isfinite(self.refine_min_cnr)):
            bad(f"refine_min_cnr must be a finite number >= 0, got {self.refine_min_cnr!r}")
        for name in ("net_width", "net_depth", "train_max_steps", "val_every", "n_average",
                     "refine_iters", "max_outer", "pd_max_iter", "pd_check_every", "val_crops"):
            if not getattr(self, name) >= 1:
                bad(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("train_min_steps", "train_patience", "crop_batch"):
            if not getattr(self, name) >= 0:
                bad(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        for name in ("crop_size", "tile_size"):
            if not (getattr(self, name) >= 8 and getattr(self, name) % 2 == 0):
                bad(f"{name} must be an even integer >= 8, got {getattr(self, name)!r}")
        if not self.learning_rate > 0:
            bad(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0 < self.threshold < 1:
            bad(f"threshold must be in (0, 1), got {self.threshold!r}")
        if not self.pd_tol > 0:
            bad(f"pd_tol must be > 0, got {self.pd_tol!r}")
        if not 0 <= self.mask_tol < 1:
            bad(f"mask_tol must be in [0, 1), got {self.mask_tol!r}")
        if not 0 <= self.energy_p <= 1:
            bad(f"energy_p must be in [0, 1], got {self.energy_p!r}")

    # -- engine structures -----------------------------------------------------------------
    def class_kinds(self, num_classes: int = 2, class_experts=None) -> tuple:
        """Expert kind per class: ``bg_expert`` for class 0 and ``fg_expert`` for the others,
        unless ``class_experts`` names one per class."""
        if class_experts is None:
            return (self.bg_expert,) + (self.fg_expert,) * (num_classes - 1)
        kinds = tuple(class_experts)
        if len(kinds) != num_classes:
            raise ValueError(f"class_experts has {len(kinds)} entries, num_classes is "
                             f"{num_classes}")
        bad = [k for k in kinds if k not in EXPERT_KINDS]
        if bad:
            raise ValueError(f"class_experts must be among {EXPERT_KINDS}, got {bad}")
        return kinds

    def spec(self, *, num_classes: int = 2, ndim: int = 2, channels: int = 0, spacing=None,
             class_experts=None, backend: str | None = None):
        """The static :class:`~self2seg_jax.alternating.Spec` of a run on an image with
        ``ndim`` spatial axes and ``channels`` channels (0 = none)."""
        from self2seg_jax import alternating, experts

        kinds = self.class_kinds(num_classes, class_experts)
        if "linear" in kinds and (ndim != 2 or channels):
            raise ValueError("linear experts are implemented for 2-D single-channel images; use "
                             "'n2f', 'constant' or 'smooth' for colour images and volumes")
        policy = backend_policy(backend)
        batch = {"always": "vmap", "never": "map", "auto": policy["batch"]}[self.stack_experts]
        train = experts.TrainConfig(
            width=self.net_width, depth=self.net_depth, linear_size=self.linear_size,
            smooth_size=self.smooth_size,
            max_steps=self.train_max_steps, min_steps=self.train_min_steps,
            patience=self.train_patience, val_every=self.val_every, n_average=self.n_average,
            conv_impl=policy["conv_impl"] if self.conv_impl == "auto" else self.conv_impl,
            conv3d=self.net_conv3d, ndim=ndim, channels=channels, mode=self.train_mode,
            crop=_side(self.crop_size, ndim), batch=self.crop_batch or policy["crop_batch"],
            val_crops=self.val_crops,
            tile=_side(self.tile_size, ndim), report=self.progress_training,
        )
        return alternating.Spec(
            kinds=kinds, train=train, spacing=spacing, data_filter=self.data_filter,
            blind_spot=self.data_term == "blind_spot", max_outer=self.max_outer,
            warm_start=self.warm_start, pd_max_iter=self.pd_max_iter,
            pd_check_every=self.pd_check_every, pd_accelerated=self.pd_accelerated,
            isotropic_tv=self.isotropic_tv, batch=batch,
            pd_block_pixels=policy["pd_block_pixels"],
        )

    def hyper(self):
        """The traced numbers (:class:`~self2seg_jax.alternating.Hyper`, float32 scalars)."""
        import jax.numpy as jnp

        from self2seg_jax import alternating

        if self.lam == "auto":
            raise ValueError("Self2SegConfig: lam='auto' is chosen per image inside segment(); "
                             "for the traced numbers give a value (config.replace(lam=...))")
        return alternating.Hyper(*(jnp.asarray(getattr(self, n), jnp.float32)
                                   for n in alternating.Hyper._fields))

    def min_image_size(self, kinds: tuple | None = None) -> int:
        """Smallest spatial size this configuration can segment (with the classes' ``kinds``)."""
        kinds = self.class_kinds() if kinds is None else kinds
        return max(8, 2 * self.linear_size) if "linear" in kinds else 8
