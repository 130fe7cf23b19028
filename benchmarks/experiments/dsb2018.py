r"""DSB2018 nuclei at noise levels 10 / 30 / 50: the paper's Table 1 and Fig. 5–7 protocol.

Data: the 16 non-overlapping 128x128 patches of the bundled DSB2018 sample
(:func:`self2seg_jax.data.sample_patches`), Gaussian noise with fixed seeds:

* ``convention="std255"`` (default): standard deviation ``level`` on the image's 0..255
  intensity scale (DenoiSeg's DSB2018_n10/n20 convention);
* ``convention="max"``: ``level / 100 * max(clean patch)`` (the authors' code for its other
  images). The paper does not define the DSB2018 noise level numerically (its §5 only names
  the levels 10, 30, 50).

Methods (``lam`` = TV weight on the min–max normalised image):

* ``chan_vese`` — convex Chan–Vese on the noisy patch, Otsu start;
* ``sequential`` — Noise2Fast on the noisy patch, then convex Chan–Vese on the denoised image
  started from the shared initial mask;
* ``self2seg`` — the paper's configuration per noise level (:func:`paper_config`): one
  Noise2Fast foreground expert and a constant background at every level, with mean-filtered
  data terms at noise 30/50;
* ``self2seg_n2fbg`` — the other reading of the paper's §5 (Example 1 and the DSB2018 text leave
  open whether the background gets its own expert at noise 30/50): a second
  Noise2Fast expert for the background at noise 30/50 (filtered data terms as above);
* ``self2seg_bs`` — ``self2seg_n2fbg`` (two Noise2Fast experts) with the blind-spot data term
  (``data_term="blind_spot"``, not in the paper): the experts' residuals are taken from
  predictions that never see the pixel's own noise, so an expert that passes noise through is
  not rewarded;
* ``self2seg_cvstart`` — ``self2seg`` started from Chan–Vese's start (Otsu of the *noisy*
  normalised patch) instead of the shared Noise2Fast start (not the paper's protocol; isolates
  the effect of the start);
* ``self2seg_default`` — the library's default configuration (identical to ``self2seg`` at
  noise 10).

Lambda grids (:func:`method_lambdas`), fixed before the full runs: :data:`LAMBDAS` for the
unfiltered energies, :data:`FILTERED_LAMBDAS` (reaching ten times lower) for the mean-filtered
ones — a 3x3 mean filter divides the noise part of the squared residual by about 9, so the
filtered energy's useful TV weights are about ten times smaller (on the first n30 patches the
filtered Self2Seg was best at :data:`LAMBDAS`' smallest value).

The shared start (paper §5: "we use the same denoised image as starting point") is the Otsu
threshold of the normalised Noise2Fast-denoised patch, exactly what :func:`segment` does with
``init="otsu"`` — with the same key, ``self2seg`` here equals ``segment(key, noisy, config=...)``.

Protocols: **oracle** (paper: per-image best lambda by ground-truth Dice) and **honest**
leave-one-patch-out (each patch gets the lambda with the best mean Dice on the *other* patches
of the same noise level), both computed from the same sweep; plus the fixed library default
``lam = 0.03``.

Sweeps are batched in compiled code — one call per method and noise level for Chan–Vese
(all patches x lambdas), one per patch for Self2Seg
(:func:`self2seg_jax.alternating.run_sweep`: first W-step shared by all lambdas) — with
``vmap`` on GPU/TPU or ``lax.map`` on CPU (``batch``): a vmapped while-loop runs every member
until the slowest has converged, which a CPU pays in full.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from self2seg_jax import alternating, api, baselines, data, experts, metrics
from self2seg_jax.config import Self2SegConfig
from self2seg_jax.initialisation import otsu_threshold

LEVELS = (10, 30, 50)
LAMBDAS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5)
"""Ten lambda values in (0, 1] (roughly geometric; contains the library default 0.03). The
paper's "ten values evenly distributed in [0, 1]" would put nine of ten values above 0.1, where
every method returns an empty mask on our [0, 1]-normalised, pixel-summed energy."""
FILTERED_LAMBDAS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)
"""Ten lambdas in (0, 1] for the mean-filtered data terms (see the module docstring); shares
six values with :data:`LAMBDAS`, including 0.03."""
METHODS = (
    "chan_vese", "sequential", "self2seg", "self2seg_n2fbg", "self2seg_bs", "self2seg_cvstart",
    "self2seg_default",
)
PAPER_TABLE1 = {
    10: {"chan_vese": 0.820, "sequential": 0.799, "self2seg": 0.851, "denoiseg": 0.864},
    30: {"chan_vese": 0.773, "sequential": 0.777, "self2seg": 0.825, "denoiseg": 0.848},
    50: {"chan_vese": 0.582, "sequential": 0.735, "self2seg": 0.786, "denoiseg": 0.818},
}
"""Paper Table 1 (Dice, 50 DSB2018 images, per-image best lambda)."""


class NoisyPatch(NamedTuple):
    """One test patch: ``clean``/``noisy`` float32 ``(s, s)`` on 0..255, ``gt`` bool."""

    index: int
    origin: tuple[int, int]
    clean: np.ndarray
    noisy: np.ndarray
    gt: np.ndarray
    sigma: float


def noisy_patches(
    level: float, *, convention: str = "std255", size: int = 128, seed: int = 0, indices=None
) -> list[NoisyPatch]:
    """The sample's non-overlapping patches with Gaussian noise (seed ``seed*10^6 + 1000*level
    + index``, so every patch and level has its own fixed noise)."""
    if convention not in ("std255", "max"):
        raise ValueError(f"convention must be 'std255' or 'max', got {convention!r}")
    if not level > 0:
        raise ValueError(f"noise level must be > 0, got {level}")
    patches = data.sample_patches(size)
    idx = range(len(patches)) if indices is None else indices
    out = []
    for i in idx:
        if not 0 <= i < len(patches):
            raise ValueError(f"patch index {i} out of range 0..{len(patches) - 1}")
        origin, clean, gt = patches[i]
        sigma = float(level) if convention == "std255" else float(level) / 100.0 * float(clean.max())
        noisy = data.add_gaussian_noise(int(seed * 10**6 + 1000 * level + i), clean, sigma)
        out.append(NoisyPatch(i, origin, clean, noisy, gt, sigma))
    return out


def paper_config(level: float, base: Self2SegConfig | None = None) -> Self2SegConfig:
    """The paper's DSB2018 configuration for a noise level (arXiv 2309.10511v2, §5 and Example 1).

    One Noise2Fast foreground expert and a constant background (``B = mean of f`` over the
    background) at every level; at noise above 10 the data terms are 3x3 mean-filtered
    ("K_sigma, sigma = 3"). Everything else (network size, schedule, ``mu``) is ``base``
    (library defaults).

    The paper is ambiguous at noise 30/50 ("a Noise2Fast expert was considered for higher noise
    levels"; the filtered formula has a ``D_B(f)``). We read it as constant background because
    the section is titled the constant-background assumption, the paper remarks that the
    background is not denoised in this experiment, and the filter is motivated by one
    *constant* region under high noise (§1.5 "one region constant + high noise"). The other
    reading (a second Noise2Fast expert) is ``method_config("self2seg_n2fbg", level)``; both
    are reported side by side in ``benchmarks/results/dsb2018``.
    """
    base = base or Self2SegConfig()
    return base.replace(fg_expert="n2f", bg_expert="constant", data_filter=1 if level <= 10 else 3)


def method_config(method: str, level: float, base: Self2SegConfig | None = None) -> Self2SegConfig:
    """Config of a Self2Seg method name (``self2seg``, ``self2seg_n2fbg``, ``self2seg_bs``,
    ``self2seg_cvstart``, ``self2seg_default``)."""
    if method in ("self2seg", "self2seg_cvstart"):
        return paper_config(level, base)
    if method == "self2seg_n2fbg":
        return paper_config(level, base).replace(bg_expert="n2f")
    if method == "self2seg_bs":
        return paper_config(level, base).replace(bg_expert="n2f", data_term="blind_spot")
    if method == "self2seg_default":
        return base or Self2SegConfig()
    raise ValueError(f"not a Self2Seg method: {method!r}")


def method_lambdas(method: str, level: float) -> tuple[float, ...]:
    """The lambda grid of a method at a noise level: :data:`FILTERED_LAMBDAS` when its data
    terms are mean-filtered, else :data:`LAMBDAS`."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    if method.startswith("self2seg") and method_config(method, level).data_filter > 1:
        return FILTERED_LAMBDAS
    return LAMBDAS


def shared_start(key: jax.Array, noisy: np.ndarray, config: Self2SegConfig):
    """The common start of ``sequential`` and ``self2seg``.

    Returns ``(f, mask, denoised)``: the normalised noisy image, the Otsu mask of the
    normalised Noise2Fast output (bool ``(h, w)``) and that output in the input's scale.
    Uses ``key`` as :func:`segment` does (first half of ``jax.random.split(key)``).
    """
    f, lo, hi = api.normalise(api.validate_image(noisy)[0], config.normalise)
    k_init, _ = jax.random.split(api.check_key(key))
    den = np.asarray(experts.denoise(k_init, f, config.learning_rate, config.spec().train))
    g = (den - den.min()) / max(float(den.max() - den.min()), 1e-12)
    mask = g > otsu_threshold(g)
    return f, mask, (den * (hi - lo) + lo).astype(np.float32)


def stacked_hyper(config: Self2SegConfig, lams) -> alternating.Hyper:
    """``config.hyper()`` with ``lam`` swept over ``lams`` (every leaf ``(L,)``), for
    :func:`self2seg_jax.alternating.run_sweep`."""
    lams = jnp.asarray(lams, jnp.float32)
    h = config.hyper()
    return jax.tree.map(lambda x: jnp.broadcast_to(x, lams.shape), h)._replace(lam=lams)


@functools.partial(jax.jit, static_argnames=("spec", "batch"))
def _cv_batch(f, m0, lams, hyper, spec, batch):
    """Chan–Vese for every (image, lambda) pair: ``f, m0`` ``(n, h, w)``, ``lams`` ``(L,)``."""
    n, nl = f.shape[0], lams.shape[0]
    fi = jnp.repeat(f, nl, axis=0)
    mi = jnp.repeat(m0, nl, axis=0)
    li = jnp.tile(lams, n)

    def one(args):
        a, m, lam = args
        return alternating.run(jax.random.key(0), a, jnp.stack([1.0 - m, m]), m.astype(jnp.int32),
                               hyper._replace(lam=lam), spec=spec).labels

    out = jax.vmap(one)((fi, mi, li)) if batch == "vmap" else lax.map(one, (fi, mi, li))
    return out.reshape((n, nl) + f.shape[1:])


def chan_vese_sweep(
    images, lams=LAMBDAS, init_masks=None, *, max_outer: int = 30, mask_tol: float = 1e-3,
    batch: str | None = None, normalise: str = "quantile",
) -> np.ndarray:
    """Convex Chan–Vese for every (image, lambda) pair in one compiled call.

    ``batch="vmap"`` vectorises all pairs (GPU/TPU); ``"map"`` (CPU default) runs them one
    after the other inside the compiled program — under ``vmap`` every pair would iterate
    until the slowest pair has converged, which on a CPU costs far more than it saves.

    Args:
      images: ``(n, h, w)`` images (any scale; each normalised by ``normalise``, as
        :func:`self2seg_jax.api.normalise`).
      lams: ``(L,)`` TV weights.
      init_masks: ``(n, h, w)`` bool starts; default Otsu of each normalised image.
      max_outer, mask_tol: Chan–Vese alternation stops when at most ``mask_tol`` of the
        pixels change (exact ``c1, c2`` updates; energy non-increasing).
    Returns:
      bool ``(n, L, h, w)`` masks.
    """
    imgs = [api.normalise(api.validate_image(im)[0], normalise)[0] for im in images]
    if init_masks is None:
        init_masks = [im > otsu_threshold(im) for im in imgs]
    m0 = np.stack([np.asarray(m, np.float32) for m in init_masks])
    cfg = baselines.chan_vese_config(float(lams[0]), max_outer=max_outer, mask_tol=mask_tol)
    out = _cv_batch(
        jnp.asarray(np.stack(imgs)), jnp.asarray(m0), jnp.asarray(lams, jnp.float32), cfg.hyper(),
        spec=cfg.spec(), batch=batch or default_batch(),
    )
    return np.asarray(out) > 0.5


def default_batch() -> str:
    """``"vmap"`` on GPU/TPU, ``"map"`` on CPU (batched convolutions in loops are slow there)."""
    return "map" if jax.default_backend() == "cpu" else "vmap"


def self2seg_sweep(
    key: jax.Array,
    f: np.ndarray,
    init_mask: np.ndarray,
    lams=LAMBDAS,
    *,
    config: Self2SegConfig = Self2SegConfig(),
    batch: str | None = None,
) -> dict:
    """Self2Seg for every lambda from one start, one compiled call (shared first W-step).

    Args:
      key: the key given to :func:`segment` (its second half runs the scheme).
      f: ``(h, w)`` float32 normalised image (from :func:`shared_start`).
      init_mask: bool ``(h, w)`` start.
      lams: ``(L,)`` lambdas.
    Returns:
      dict of NumPy arrays: ``mask`` bool ``(L, h, w)``, ``denoised`` float32 ``(L, h, w)``
      composite on the normalised scale, ``num_outer``, ``status`` ``(L,)`` int,
      ``train_steps`` ``(L,)`` total Adam steps.
    """
    _, k_run = jax.random.split(api.check_key(key))
    m0 = jnp.asarray(init_mask, jnp.float32)
    spec = config.spec()
    s = alternating.run_sweep(
        k_run, jnp.asarray(f, jnp.float32), jnp.stack([1.0 - m0, m0]), m0.astype(jnp.int32),
        stacked_hyper(config, lams), spec=spec, batch=batch or default_batch(),
    )
    den = jax.vmap(lambda t: alternating.composite(alternating.probabilities(t, spec), t.den))(s)
    s = jax.device_get(s)
    return {
        "mask": np.asarray(s.labels) > 0,
        "denoised": np.asarray(den, np.float32),
        "num_outer": np.asarray(s.it),
        "status": np.asarray(s.status),
        "train_steps": np.asarray(s.train_steps).sum(axis=(1, 2)),
    }


def select_lambda(dice: np.ndarray) -> dict:
    """The two lambda protocols from a ``(n_images, n_lambdas)`` Dice table.

    Returns dict with ``oracle`` / ``loo`` ``(n,)`` Dice and ``oracle_idx`` / ``loo_idx``
    ``(n,)`` grid indices. ``loo``: image ``i`` gets the lambda of best mean Dice over the
    other images (ties -> smaller lambda). Needs ``n >= 2``.
    """
    d = np.asarray(dice, np.float64)
    if d.ndim != 2 or d.shape[0] < 2:
        raise ValueError(f"dice table must be (n_images >= 2, n_lambdas), got shape {d.shape}")
    oracle_idx = d.argmax(axis=1)
    total = d.sum(axis=0)
    loo_idx = np.array([np.argmax((total - d[i]) / (d.shape[0] - 1)) for i in range(d.shape[0])])
    rows = np.arange(d.shape[0])
    return {
        "oracle": d[rows, oracle_idx],
        "oracle_idx": oracle_idx,
        "loo": d[rows, loo_idx],
        "loo_idx": loo_idx,
    }


def dice_table(masks: np.ndarray, gts) -> np.ndarray:
    """``(n, L)`` Dice of ``(n, L, h, w)`` masks against ``n`` ground truths."""
    return np.array([[metrics.dice(m, g) for m in ms] for ms, g in zip(masks, gts)])


def run_level(
    level: float,
    *,
    key: jax.Array,
    methods=METHODS,
    lams=LAMBDAS,
    indices=None,
    convention: str = "std255",
    size: int = 128,
    base: Self2SegConfig | None = None,
    batch: str | None = None,
    skip=None,
    on_row=None,
) -> list[dict]:
    """Run the lambda sweep of every method at one noise level; one row per (method, patch).

    Args:
      key: one key for all patches (each patch's start and scheme use it like ``segment``).
      size: patch size (the paper's 128; smaller for quick checks).
      skip: optional set of ``(method, patch_index)`` already done (not run, no row).
      on_row: optional callback ``on_row(row, masks)`` as soon as a row is ready (``masks``:
        bool ``(L, h, w)``), for incremental saving.
    Returns:
      rows: dicts with ``level, convention, method, patch, origin, sigma, lams, dice (L,),
      seconds`` (this patch's share of the method's wall time; the shared Noise2Fast start is
      counted in ``start_seconds``), ``init_dice`` (the Dice of the method's start: the shared
      one, or Otsu of the noisy patch for ``self2seg_cvstart``); denoising methods
      add ``psnr (L,)`` (output vs clean, 0..255 range) and Self2Seg adds ``num_outer``,
      ``status``, ``train_steps`` ``(L,)``.
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    base = base or Self2SegConfig()
    skip = set(skip or ())
    patches = noisy_patches(level, convention=convention, size=size, indices=indices)
    lams = [float(x) for x in lams]
    rows = []

    def emit(method, p, masks, seconds, **extra):
        row = {
            "level": float(level), "convention": convention, "method": method, "patch": p.index,
            "origin": list(p.origin), "sigma": p.sigma, "lams": lams,
            "dice": [metrics.dice(m, p.gt) for m in masks], "seconds": seconds, **extra,
        }
        rows.append(row)
        if on_row is not None:
            on_row(row, masks)

    todo = {m: [p for p in patches if (m, p.index) not in skip] for m in methods}
    if todo.get("chan_vese"):
        ps = todo["chan_vese"]
        t = time.perf_counter()
        masks = chan_vese_sweep([p.noisy for p in ps], lams, batch=batch,
                                normalise=base.normalise)
        dt = (time.perf_counter() - t) / len(ps)
        for p, m in zip(ps, masks):
            emit("chan_vese", p, m, dt)

    own_start = ("chan_vese", "self2seg_cvstart")  # start from Otsu of the noisy patch
    need = sorted({p.index for m in methods if m not in own_start for p in todo[m]})
    starts = {}
    for p in patches:
        if p.index in need:
            t = time.perf_counter()
            f, m0, den = shared_start(key, p.noisy, base)
            starts[p.index] = (f, m0, den, time.perf_counter() - t)

    def start_info(p):
        f, m0, den, dt = starts[p.index]
        return {"start_seconds": dt, "init_dice": metrics.dice(m0, p.gt)}

    def start_of(method, p):
        """``(f, m0, row fields)`` of a Self2Seg method's start on patch ``p``."""
        if method == "self2seg_cvstart":  # Chan–Vese's start: Otsu of the noisy patch
            f = api.normalise(api.validate_image(p.noisy)[0], base.normalise)[0]
            m0 = f > otsu_threshold(f)
            return f, m0, {"start_seconds": 0.0, "init_dice": metrics.dice(m0, p.gt)}
        return starts[p.index][0], starts[p.index][1], start_info(p)

    if todo.get("sequential"):
        ps = todo["sequential"]
        t = time.perf_counter()
        masks = chan_vese_sweep(
            [starts[p.index][2] for p in ps], lams, init_masks=[starts[p.index][1] for p in ps],
            batch=batch,
        )
        dt = (time.perf_counter() - t) / len(ps)
        for p, m in zip(ps, masks):
            psnr = metrics.psnr(starts[p.index][2], p.clean, data_range=255.0)
            emit("sequential", p, m, dt, psnr=[psnr] * len(lams), **start_info(p))

    for method in [x for x in methods if x.startswith("self2seg")]:
        cfg = method_config(method, level, base)
        for p in todo[method]:
            f, m0, extra = start_of(method, p)
            t = time.perf_counter()
            r = self2seg_sweep(key, f, m0, lams, config=cfg, batch=batch)
            dt = time.perf_counter() - t
            lo, hi = float(p.noisy.min()), float(p.noisy.max())
            psnr = [metrics.psnr(d * (hi - lo) + lo, p.clean, data_range=255.0) for d in r["denoised"]]
            emit(
                method, p, r["mask"], dt, psnr=psnr, num_outer=r["num_outer"].tolist(),
                status=r["status"].tolist(), train_steps=r["train_steps"].tolist(), **extra,
            )
    return rows
