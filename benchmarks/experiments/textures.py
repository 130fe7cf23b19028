r"""Equal-mean textures (paper Fig. 8, 9) and the stripes toy with linear experts (Fig. 1).

**Textures** (:func:`two_texture_image`, :func:`run_texture_experiment`). The paper's Brodatz
image is not redistributable; we build the same kind of image from the texture photographs
bundled with scikit-image (``skimage.data.brick``, ``grass``, ``gravel``; 512x512 uint8, no
download): the left ``split`` columns (paper: 140 of 256) come from one texture, the rest from
another, and the left texture is **shifted so that both regions have exactly the same mean**
(as in the paper's Brodatz preprocessing), so no method that models a region by its mean
intensity — convex Chan–Vese — can tell them apart. Self2Seg is started from one box in each
region and uses two Noise2Fast experts (paper: 50x50 boxes, ``lam = 0.06``, lr ``1e-3``, 3 outer
iterations); it is compared with convex Chan–Vese on the noisy image (segmentation, Dice) and
with Noise2Fast on the whole image (denoising, PSNR / SSIM of the Self2Seg composite
``u D_F f + (1 - u) D_B f``).

``lam`` units: the image is min–max normalised to ``[0, 1]`` and the data term is summed over
pixels — the same units as the authors' code (``sum (f - D f)^2 u + lam * TV(u)`` on a
``[0, 1]`` image), so the paper's ``lam = 0.06`` is used as is (library default: 0.03).

**Stripes toy** (:func:`stripes_toy`, :func:`run_stripes_toy`): a disc of horizontal stripes in
a field of vertical stripes (both of mean 0.5, :func:`self2seg_jax.data.stripes`), two
*linear* experts (one 15x15 filter + bias each, fitted exactly) trained in two 30x30 boxes,
``lam = 0.02``, at most 3 outer iterations. Reports where each expert has the smaller
pixelwise error after the first W-step, and the final mask.

Figures: :func:`texture_figure`, :func:`toy_figure` (plain :class:`matplotlib.figure.Figure`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import numpy as np

from self2seg_jax import api, baselines, data, metrics
from self2seg_jax.config import Self2SegConfig
from self2seg_jax.initialisation import Boxes

TEXTURES = ("brick", "grass", "gravel")
"""Texture photographs bundled with scikit-image (512x512 uint8 greyscale)."""

NOISE_CONVENTIONS = ("max", "std255")

PAPER_SPLIT = 140 / 256
"""Fraction of columns taken by the left texture (paper's Brodatz code: 140 of 256)."""

PAPER_TEXTURE_LAM = 0.06
PAPER_TEXTURE_BOX = 50
PAPER_TOY_LAM = 0.02
PAPER_TOY_BOX = 30

PD_TOL = 1e-5
PD_MAX_ITER = 20000
"""Primal–dual tolerance / cap of the experiment configurations (see :func:`texture_config`)."""

PAPER_FIG9 = {"psnr_joint": 20.36, "psnr_n2f": 19.815, "ssim_joint": 0.753, "ssim_n2f": 0.696}
"""Fig. 9 (Brodatz, noise 10): joint two-expert composite vs Noise2Fast on the whole image."""


# ----------------------------------------------------------------------------------------
# Two-texture image
# ----------------------------------------------------------------------------------------


class TextureImage(NamedTuple):
    """A two-texture test image (see :func:`two_texture_image`).

    Attributes:
      clean: ``(size, size)`` float32, roughly ``[0, 1]`` (photo / 255, left part shifted).
      noisy: ``(size, size)`` float32, ``clean + sigma * N(0, 1)`` (not clipped).
      gt: ``(size, size)`` bool, True on the left texture (the foreground region).
      sigma: noise standard deviation on the ``clean`` scale.
      split: number of columns of the left texture.
      shift: intensity added to the left texture to equalise the region means.
      left, right: texture names.
    """

    clean: np.ndarray
    noisy: np.ndarray
    gt: np.ndarray
    sigma: float
    split: int
    shift: float
    left: str
    right: str


def _skimage_data():
    try:
        import skimage.data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the texture experiments use the texture photographs bundled with scikit-image; "
            "install it with `pip install scikit-image` (or `pip install self2seg_jax[test]`)"
        ) from e
    return skimage.data


def _check_name(name, which: str) -> str:
    if not isinstance(name, str) or name not in TEXTURES:
        what = f"{which} texture" if which else "texture"
        raise ValueError(f"unknown {what} {name!r}; valid names: {', '.join(TEXTURES)}")
    return name


def _check_int(v, name: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def load_texture(name: str, *, zoom: int = 2) -> np.ndarray:
    """One bundled texture photograph as float64 in ``[0, 1]``, block-averaged by ``zoom``.

    Args:
      name: one of :data:`TEXTURES`.
      zoom: integer downsampling factor (``zoom x zoom`` block mean) of the 512x512 photo.

    Returns:
      ``(512 // zoom, 512 // zoom)`` float64 array.
    """
    _check_name(name, "")  # "unknown texture 'x'; valid names: ..."
    zoom = _check_int(zoom, "zoom", 1)
    a = np.asarray(getattr(_skimage_data(), name)(), np.float64) / 255.0
    if a.ndim == 3:  # pragma: no cover - the bundled textures are greyscale
        a = a.mean(-1)
    h, w = (a.shape[0] // zoom) * zoom, (a.shape[1] // zoom) * zoom
    return a[:h, :w].reshape(h // zoom, zoom, w // zoom, zoom).mean((1, 3))


def two_texture_image(
    left: str = "brick",
    right: str = "grass",
    size: int = 256,
    noise: float = 10.0,
    seed: int = 0,
    convention: str = "max",
    *,
    zoom: int = 2,
    split: int | None = None,
    geometry: str = "split",
) -> TextureImage:
    """Two textures side by side with **equal region means**, plus Gaussian noise (Fig. 8/9).

    Columns ``[0, split)`` come from texture ``left`` and ``[split, size)`` from ``right``
    (each the top-left ``size x size`` crop of the photo block-averaged by ``zoom``;
    ``zoom = 2`` at ``size = 256`` shows the whole photo). As in the paper's Brodatz
    preprocessing the left part is then shifted by a constant so that both regions have
    the same mean intensity (to float32 precision).

    Args:
      left, right: texture names, from :data:`TEXTURES` (must differ).
      size: image side (pixels); needs ``size * zoom <= 512``.
      noise: noise level ``>= 0``. ``convention="max"`` (paper's Brodatz code):
        ``sigma = noise / 100 * max(clean)``; ``"std255"``: ``sigma = noise / 255``
        (``noise`` on a 0..255 intensity scale).
      seed: NumPy seed of the noise.
      zoom: downsampling factor of the 512x512 photos.
      split: columns of the left texture; default ``round(size * 140 / 256)``.
      geometry: ``"split"`` (left | right, the paper's layout) or ``"disc"`` (texture
        ``left`` inside a centred disc of radius ``size / 4``, ``right`` around it;
        ``split`` is then ignored and set to 0).

    Returns:
      :class:`TextureImage` (``clean``/``noisy`` float32 ``(size, size)``, ``gt`` bool).

    Raises:
      ValueError: unknown texture name or convention, invalid size / zoom / split / noise.
      ImportError: scikit-image is not installed.
    """
    _check_name(left, "left")
    _check_name(right, "right")
    if left == right:
        raise ValueError(f"left and right textures must differ, got {left!r} twice")
    if convention not in NOISE_CONVENTIONS:
        raise ValueError(
            f"unknown noise convention {convention!r}; valid: {', '.join(NOISE_CONVENTIONS)}"
        )
    size = _check_int(size, "size", 16)
    zoom = _check_int(zoom, "zoom", 1)
    if size * zoom > 512:
        raise ValueError(f"size * zoom must be <= 512 (the photos are 512x512), got {size}*{zoom}")
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not (
        math.isfinite(noise) and noise >= 0
    ):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    _check_int(seed, "seed", 0)
    if split is None:
        split = int(round(size * PAPER_SPLIT))
    split = _check_int(split, "split", 1)
    if not split < size:
        raise ValueError(f"split must be in [1, size), got {split} for size {size}")

    if geometry not in ("split", "disc"):
        raise ValueError(f"geometry must be 'split' or 'disc', got {geometry!r}")
    a = load_texture(left, zoom=zoom)[:size, :size]
    b = load_texture(right, zoom=zoom)[:size, :size]
    gt = np.zeros((size, size), bool)
    if geometry == "split":
        gt[:, :split] = True
    else:
        yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
        gt = yy ** 2 + xx ** 2 <= (size / 4) ** 2
        split = 0
    shift = float(b[~gt].mean() - a[gt].mean())
    clean64 = np.where(gt, a + shift, b)
    clean = clean64.astype(np.float32)
    # float32 rounding can leave a ~1e-8 mismatch; correct it on the left region
    mismatch = clean[~gt].astype(np.float64).mean() - clean[gt].astype(np.float64).mean()
    clean[gt] += np.float32(mismatch)
    if convention == "max":
        sigma = float(noise) / 100.0 * float(clean.max())
    else:
        sigma = float(noise) / 255.0
    noisy = data.add_gaussian_noise(int(seed), clean, sigma)
    return TextureImage(clean, noisy, gt, sigma, split, shift, left, right)


def texture_boxes(size: int, split: int, box: int | None = None) -> Boxes:
    """One ``box x box`` box centred in each region, at mid height (paper: 50x50 at 256).

    ``box`` defaults to ``round(50 * size / 256)``; foreground = left region.
    """
    if box is None:
        box = max(4, int(round(PAPER_TEXTURE_BOX * size / 256)))
    box = _check_int(box, "box", 1)
    if box > split or box > size - split:
        raise ValueError(f"box {box} does not fit in regions of widths {split} and {size - split}")
    y0 = (size - box) // 2
    xf = (split - box) // 2
    xb = split + (size - split - box) // 2
    return Boxes(fg=[(y0, xf, y0 + box, xf + box)], bg=[(y0, xb, y0 + box, xb + box)])


def texture_config(**overrides) -> Self2SegConfig:
    """Self2Seg configuration of the Fig. 8/9 experiment: two Noise2Fast experts,
    ``lam = 0.06``, lr ``1e-3``, at most 3 outer iterations, no reference-mask term
    (the paper's Algorithm 1); the library's default CNN (32 channels x 4 layers) and training
    schedule; a tighter primal–dual tolerance than the library default (``pd_tol = 1e-5``,
    ``pd_max_iter = 20000``): with two similar experts the data term ``d_F - d_B`` is weak
    and the u-step needs ~5000-15000 iterations at 256x256 — the default cap of 3000 stops it
    early (measured: an empty mask instead of Dice 0.97 on brick|grass after the first
    W-step). ``overrides`` replace any field."""
    base = dict(
        lam=PAPER_TEXTURE_LAM,
        mu=0.0,
        fg_expert="n2f",
        bg_expert="n2f",
        learning_rate=1e-3,
        max_outer=3,
        pd_tol=PD_TOL,
        pd_max_iter=PD_MAX_ITER,
    )
    base.update(overrides)
    return Self2SegConfig(**base)


def label_free_dice(mask, gt) -> float:
    """``max(dice(mask, gt), dice(~mask, gt))``: Dice when the foreground label is arbitrary."""
    m, g = np.asarray(mask, bool), np.asarray(gt, bool)
    return max(metrics.dice(m, g), metrics.dice(~m, g))


def first_step(key, image, init, config: Self2SegConfig, gt, clean=None) -> tuple:
    """One outer iteration from ``init``: where does each expert of the first W-step fit better?

    Runs :func:`self2seg_jax.segment` with ``max_outer = 1`` and compares the pixelwise data
    terms ``d_F = (f - D_F f)^2`` and ``d_B = (f - D_B f)^2`` (on the min–max normalised
    scale of the energy; the comparison is scale-free).

    Args:
      key: ``jax.random.key``.
      image: ``(h, w)`` noisy image.
      init: :class:`Boxes` (foreground box in the ``gt`` region) or any other ``init`` of
        :func:`self2seg_jax.segment` — e.g. ``gt`` itself: experts trained on the true
        regions ("oracle" W-step), which shows whether the true partition is what the energy
        prefers once the experts are as good as the regions allow.
      config: the configuration (its ``max_outer`` is replaced by 1).
      gt: ``(h, w)`` bool ground truth.
      clean: optional ``(h, w)`` clean image: adds ``mse_F_vs_clean_in_fg`` etc., each
        expert's squared error against the clean image per region (normalised scale) — how
        well it *denoises* there, as opposed to how close it stays to the noisy image; and
        ``psnr_first_composite`` (the step's composite ``u D_F + (1 - u) D_B``) and
        ``psnr_gt_composite`` / ``ssim_gt_composite`` (``gt D_F + (1 - gt) D_B``; PSNR and
        SSIM with ``data_range = clean.max() - clean.min()``).

    Returns:
      ``(result, fg_better, metrics)``: the :class:`Self2SegResult`, the ``(h, w)`` bool map
      ``d_F < d_B`` and a dict with ``fg_better_in_fg`` (fraction of ``gt`` where the
      foreground expert fits better), ``bg_better_in_bg`` (fraction of ``~gt`` where the
      background expert fits at least as well), ``map_accuracy``, the region means
      ``d_F_in_fg, d_B_in_fg, d_F_in_bg, d_B_in_bg``, ``dice_first`` (mask after this u-step),
      ``train_steps`` and ``seconds`` (wall time, including compilation on a first call).
    """
    gt = np.asarray(gt, bool)
    t = time.perf_counter()
    res = _segment_quiet(key, image, init, config.replace(max_outer=1))
    seconds = time.perf_counter() - t
    f = np.asarray(image, np.float64)
    scale = float(f.max() - f.min())
    d_f = ((f - res.denoised_fg) / scale) ** 2
    d_b = ((f - res.denoised_bg) / scale) ** 2
    fg_better = d_f < d_b
    m = {
        "fg_better_in_fg": float(fg_better[gt].mean()),
        "bg_better_in_bg": float((~fg_better[~gt]).mean()),
        "map_accuracy": float(np.mean(fg_better == gt)),
        "d_F_in_fg": float(d_f[gt].mean()),
        "d_B_in_fg": float(d_b[gt].mean()),
        "d_F_in_bg": float(d_f[~gt].mean()),
        "d_B_in_bg": float(d_b[~gt].mean()),
        "dice_first": metrics.dice(res.mask, gt),
        "psnr_first_composite": None,
        "foreground_fraction_first": float(np.mean(res.mask)),
        "status_first": res.status,
        "pd_iterations_first": int(np.asarray(res.pd_iterations)[0]),
        "train_steps": np.asarray(res.train_steps)[0].tolist(),
        "seconds": seconds,
    }
    if clean is None:
        del m["psnr_first_composite"]
    else:
        c = np.asarray(clean, np.float64)
        dr = float(c.max() - c.min())
        e_f = ((c - res.denoised_fg) / scale) ** 2
        e_b = ((c - res.denoised_bg) / scale) ** 2
        gt_comp = np.where(gt, res.denoised_fg, res.denoised_bg)
        m.update(
            mse_F_vs_clean_in_fg=float(e_f[gt].mean()),
            mse_B_vs_clean_in_fg=float(e_b[gt].mean()),
            mse_F_vs_clean_in_bg=float(e_f[~gt].mean()),
            mse_B_vs_clean_in_bg=float(e_b[~gt].mean()),
            psnr_first_composite=metrics.psnr(res.denoised, c, data_range=dr),
            psnr_gt_composite=metrics.psnr(gt_comp, c, data_range=dr),
            ssim_gt_composite=metrics.ssim(gt_comp, c, data_range=dr),
        )
    return res, fg_better, m


@dataclasses.dataclass(frozen=True)
class TextureExperiment:
    """Outputs of :func:`run_texture_experiment`.

    Attributes:
      self2seg: the :class:`self2seg_jax.Self2SegResult` at ``config.lam``.
      cv_mask: ``(h, w)`` bool convex Chan–Vese mask on the noisy image (label as returned).
      n2f: ``(h, w)`` float32 Noise2Fast on the whole image (None if not run).
      metrics: JSON-serialisable numbers (Dice, PSNR, SSIM, wall times, statuses).
      sweep: one dict of metrics per extra ``lam`` of the Self2Seg sweep.
      fg_better: ``(h, w)`` bool first-W-step map ``d_F < d_B`` (None unless ``diagnose``).
    """

    self2seg: api.Self2SegResult
    cv_mask: np.ndarray | None
    n2f: np.ndarray | None
    metrics: dict
    sweep: list
    fg_better: np.ndarray | None = None


def _denoise_scores(x, clean, gt, data_range) -> dict:
    x = np.asarray(x, np.float64)
    c = np.asarray(clean, np.float64)
    out = {
        "psnr": metrics.psnr(x, c, data_range=data_range),
        "ssim": metrics.ssim(x, c, data_range=data_range),
    }
    for name, m in (("left", gt), ("right", ~gt)):
        mse = float(np.mean((x[m] - c[m]) ** 2))
        out[f"psnr_{name}"] = float(10 * np.log10(data_range**2 / mse)) if mse > 0 else float("inf")
    return out


def _s2s_summary(res: api.Self2SegResult, gt, clean, data_range, lam, seconds) -> dict:
    den = _denoise_scores(res.denoised, clean, gt, data_range)
    return {
        "lam": float(lam),
        "dice": metrics.dice(res.mask, gt),
        "psnr": den["psnr"],
        "ssim": den["ssim"],
        "psnr_left": den["psnr_left"],
        "psnr_right": den["psnr_right"],
        "foreground_fraction": float(np.mean(res.mask)),
        "status": res.status,
        "num_outer": int(res.num_outer),
        "train_steps": np.asarray(res.train_steps).tolist(),
        "pd_iterations": np.asarray(res.pd_iterations).tolist(),
        "energies": [float(e) for e in res.energies],
        "seconds": float(seconds),
    }


def _segment_quiet(key, image, boxes, cfg):
    with warnings.catch_warnings():  # a degenerate mask is reported through its status
        warnings.simplefilter("ignore", RuntimeWarning)
        return api.segment(key, image, init=boxes, config=cfg)


def run_texture_experiment(
    key: jax.Array,
    img: TextureImage,
    *,
    config: Self2SegConfig | None = None,
    boxes: Boxes | None = None,
    cv_lam: float | None = None,
    extra_lams: Sequence[float] = (),
    run_chan_vese: bool = True,
    run_n2f: bool = True,
    diagnose: bool = False,
    oracle: bool = False,
    variants: Mapping[str, Self2SegConfig] | None = None,
) -> TextureExperiment:
    """Self2Seg (box start, two experts) vs convex Chan–Vese vs Noise2Fast on one image.

    * Self2Seg: :func:`self2seg_jax.segment` on ``img.noisy`` with ``boxes`` (default
      :func:`texture_boxes`) and ``config`` (default :func:`texture_config`); Dice of the
      final mask (foreground = left texture, fixed by the boxes).
    * Chan–Vese: :func:`self2seg_jax.baselines.chan_vese` on ``img.noisy`` (Otsu start,
      TV weight ``cv_lam``, default ``config.lam``, same units). With equal region means its
      foreground label is arbitrary, so its Dice is reported as
      ``max(dice(m, gt), dice(~m, gt))`` (``dice_chan_vese``; ``dice_chan_vese_as_is`` is
      the Dice of the returned label).
    * Noise2Fast: :func:`self2seg_jax.baselines.denoise_n2f` on the whole noisy image with
      the same CNN and schedule as one expert.
    * Denoising: PSNR / SSIM of ``result.denoised`` and of the Noise2Fast image against
      ``img.clean``, both with ``data_range = clean.max() - clean.min()``; also PSNR
      per region and of the noisy input.
    * ``extra_lams``: further Self2Seg runs (``lam`` is traced: no recompilation), in
      ``sweep``.
    * ``diagnose``: also run one outer iteration alone (:func:`first_step`) and record where
      the box-trained experts fit better (``metrics["first_step"]``, ``fg_better``).
    * ``oracle``: one outer iteration started from the ground-truth mask
      (``metrics["oracle_step"]``, :func:`first_step` with ``init = gt``): experts trained on
      the true regions; its ``psnr_gt_composite`` vs ``psnr_n2f`` tests the Fig. 9 claim
      (two region experts denoise better than one) independently of the segmentation, and
      its ``dice_first`` says whether the u-step keeps the true partition.
    * ``variants``: further named configurations run from the same boxes
      (``metrics["variants"][name]``, same keys as ``metrics["self2seg"]``).

    ``dice_trivial`` is the label-free Dice of a constant mask (the better of all-foreground
    and all-background), the floor any label-free Dice should be compared with.

    Wall times are ``time.perf_counter`` seconds of each call; the first Self2Seg and
    Noise2Fast calls of a process include compilation.

    Args:
      key: ``jax.random.key``; split into the Self2Seg and Noise2Fast keys.
      img: a :class:`TextureImage`.

    Returns:
      :class:`TextureExperiment`.
    """
    if not isinstance(img, TextureImage):
        raise ValueError(
            f"img must be a TextureImage (see two_texture_image), got {type(img).__name__}"
        )
    cfg = texture_config() if config is None else config
    if not isinstance(cfg, Self2SegConfig):
        raise ValueError(f"config must be a Self2SegConfig, got {type(cfg).__name__}")
    size = img.noisy.shape[0]
    if boxes is None:
        boxes = texture_boxes(size, img.split)
    if not isinstance(boxes, Boxes):
        raise ValueError(f"boxes must be self2seg_jax.Boxes, got {type(boxes).__name__}")
    cv_lam = cfg.lam if cv_lam is None else float(cv_lam)
    k_s2s, k_n2f = jax.random.split(api.check_key(key))
    gt, clean = img.gt, img.clean
    data_range = float(clean.max() - clean.min())

    t = time.perf_counter()
    res = _segment_quiet(k_s2s, img.noisy, boxes, cfg)
    s2s = _s2s_summary(res, gt, clean, data_range, cfg.lam, time.perf_counter() - t)

    out = {
        "size": int(size),
        "left": img.left,
        "right": img.right,
        "sigma": float(img.sigma),
        "split": int(img.split),
        "boxes": {"fg": [list(b) for b in boxes.fg], "bg": [list(b) for b in boxes.bg]},
        "data_range": data_range,
        "lam": float(cfg.lam),
        "dice_self2seg": s2s["dice"],
        "psnr_self2seg": s2s["psnr"],
        "ssim_self2seg": s2s["ssim"],
        "psnr_self2seg_left": s2s["psnr_left"],
        "psnr_self2seg_right": s2s["psnr_right"],
        "self2seg": s2s,
        "time_self2seg_s": s2s["seconds"],
    }
    frac = float(gt.mean())
    out["dice_trivial"] = max(2 * frac / (1 + frac), 2 * (1 - frac) / (2 - frac))
    noisy_scores = _denoise_scores(img.noisy, clean, gt, data_range)
    out.update(psnr_noisy=noisy_scores["psnr"], ssim_noisy=noisy_scores["ssim"])

    cv_mask = None
    if run_chan_vese:
        t = time.perf_counter()
        with warnings.catch_warnings():  # a degenerate mask is reported through its status
            warnings.simplefilter("ignore", RuntimeWarning)
            cv = baselines.chan_vese(img.noisy, lam=cv_lam, init="otsu", return_result=True)
        out["time_chan_vese_s"] = time.perf_counter() - t
        cv_mask = cv.mask
        out.update(
            cv_lam=float(cv_lam),
            dice_chan_vese=label_free_dice(cv_mask, gt),
            dice_chan_vese_as_is=metrics.dice(cv_mask, gt),
            chan_vese_status=cv.status,
            chan_vese_num_outer=int(cv.num_outer),
            chan_vese_foreground_fraction=float(np.mean(cv_mask)),
        )
    n2f = None
    if run_n2f:
        t = time.perf_counter()
        n2f = baselines.denoise_n2f(k_n2f, img.noisy, config=cfg)
        out["time_n2f_s"] = time.perf_counter() - t
        sc = _denoise_scores(n2f, clean, gt, data_range)
        out.update(
            psnr_n2f=sc["psnr"],
            ssim_n2f=sc["ssim"],
            psnr_n2f_left=sc["psnr_left"],
            psnr_n2f_right=sc["psnr_right"],
        )
    sweep = []
    for lam in extra_lams:
        c = cfg.replace(lam=float(lam))
        t = time.perf_counter()
        r = _segment_quiet(k_s2s, img.noisy, boxes, c)
        sweep.append(_s2s_summary(r, gt, clean, data_range, lam, time.perf_counter() - t))
    if variants:
        out["variants"] = {}
        for name, vc in variants.items():
            if not isinstance(vc, Self2SegConfig):
                raise ValueError(f"variant {name!r} must be a Self2SegConfig")
            t = time.perf_counter()
            r = _segment_quiet(k_s2s, img.noisy, boxes, vc)
            out["variants"][name] = {
                **_s2s_summary(r, gt, clean, data_range, vc.lam, time.perf_counter() - t),
                "config_changes": {
                    k: v for k, v in dataclasses.asdict(vc).items()
                    if v != getattr(cfg, k)
                },
            }
    fg_better = None
    if diagnose:
        _, fg_better, out["first_step"] = first_step(k_s2s, img.noisy, boxes, cfg, gt, clean)
    if oracle:
        out["oracle_step"] = first_step(k_s2s, img.noisy, gt, cfg, gt, clean)[2]
    return TextureExperiment(
        self2seg=res, cv_mask=cv_mask, n2f=n2f, metrics=out, sweep=sweep, fg_better=fg_better
    )


# ----------------------------------------------------------------------------------------
# Stripes toy (Fig. 1)
# ----------------------------------------------------------------------------------------


class StripesToy(NamedTuple):
    """The Fig. 1 toy (see :func:`stripes_toy`).

    Attributes:
      noisy, clean: ``(size, size)`` float32 (clean stripes in ``[0, 1]``, mean 0.5 in each region).
      gt: ``(size, size)`` bool disc of horizontal stripes (the foreground).
      boxes: :class:`Boxes` with one ``box x box`` box in each region.
    """

    noisy: np.ndarray
    clean: np.ndarray
    gt: np.ndarray
    boxes: Boxes


def stripes_toy(
    size: int = 256,
    *,
    period: float = 6.0,
    noise: float = 0.1,
    seed: int = 0,
    radius: float | None = None,
    box: int = PAPER_TOY_BOX,
) -> StripesToy:
    """Paper Fig. 1 toy: :func:`self2seg_jax.data.stripes` plus one box per region.

    Foreground box centred on the disc; background box centred at ``(0.15 size, 0.15 size)``
    (in the corner, outside the disc).

    Args:
      size: image side (paper: 256).
      period: stripe period in pixels.
      noise: noise standard deviation on the ``[0, 1]`` stripe scale.
      seed: NumPy seed of the noise.
      radius: disc radius (default ``size / 4``).
      box: box side (paper: 30).

    Returns:
      :class:`StripesToy`.
    """
    size = _check_int(size, "size", 16)
    box = _check_int(box, "box", 1)
    if not (isinstance(period, numbers.Real) and period > 0):
        raise ValueError(f"period must be > 0, got {period!r}")
    if not (isinstance(noise, numbers.Real) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    r = size / 4 if radius is None else float(radius)
    if not 0 < r < size / 2:
        raise ValueError(f"radius must be in (0, size/2), got {r}")
    noisy, clean, gt = data.stripes(
        int(seed), size, period=float(period), noise=float(noise), radius=r
    )
    y0 = size // 2 - box // 2
    c = int(round(0.15 * size)) - box // 2
    fg = (y0, y0, y0 + box, y0 + box)
    bg = (max(c, 0), max(c, 0), max(c, 0) + box, max(c, 0) + box)
    for name, b in (("foreground", fg), ("background", bg)):
        inside = gt[b[0]:b[2], b[1]:b[3]]
        want = name == "foreground"
        if b[2] > size or not np.all(inside == want):
            raise ValueError(
                f"{name} box {b} of side {box} does not fit inside its region for size {size}, "
                f"radius {r:g}; use a smaller box"
            )
    return StripesToy(noisy, clean, gt, Boxes(fg=[fg], bg=[bg]))


def toy_config(**overrides) -> Self2SegConfig:
    """Fig. 1 configuration: two linear experts (15x15 filter + bias, exact least squares),
    ``lam = 0.02``, at most 3 outer iterations, no reference-mask term."""
    base = dict(
        lam=PAPER_TOY_LAM,
        mu=0.0,
        fg_expert="linear",
        bg_expert="linear",
        linear_size=15,
        max_outer=3,
        pd_tol=PD_TOL,
        pd_max_iter=PD_MAX_ITER,
    )
    base.update(overrides)
    return Self2SegConfig(**base)


@dataclasses.dataclass(frozen=True)
class ToyResult:
    """Outputs of :func:`run_stripes_toy`.

    Attributes:
      first: :class:`self2seg_jax.Self2SegResult` of one outer iteration (box-trained experts).
      final: the result with ``config.max_outer`` iterations.
      fg_better: ``(h, w)`` bool, ``(f - D_F f)^2 < (f - D_B f)^2`` after the first W-step.
      metrics: JSON-serialisable numbers.
    """

    first: api.Self2SegResult
    final: api.Self2SegResult
    fg_better: np.ndarray
    metrics: dict


def run_stripes_toy(
    toy: StripesToy,
    *,
    config: Self2SegConfig | None = None,
    key: jax.Array | None = None,
) -> ToyResult:
    """Run the Fig. 1 toy: first W-step maps, then the full scheme.

    ``fg_better`` compares the pixelwise squared errors of the box-trained experts
    (``result.denoised_fg`` / ``denoised_bg`` of a run with ``max_outer = 1``; the
    comparison is the same on the normalised and the input scale). Metrics:
    those of :func:`first_step` (``fg_better_in_fg``: fraction of the disc where the
    foreground expert is better; ``bg_better_in_bg``: fraction of the background where the
    background expert is at least as good; ``map_accuracy``; mean data terms per region;
    ``dice_first``: mask after one iteration), ``dice_final``, and wall times (each call
    compiles once: ``max_outer`` is static).

    Args:
      toy: a :class:`StripesToy`.
      config: default :func:`toy_config`.
      key: ``jax.random.key`` (unused by linear experts); default ``key(0)``.
    """
    if not isinstance(toy, StripesToy):
        raise ValueError(f"toy must be a StripesToy (see stripes_toy), got {type(toy).__name__}")
    cfg = toy_config() if config is None else config
    if not isinstance(cfg, Self2SegConfig):
        raise ValueError(f"config must be a Self2SegConfig, got {type(cfg).__name__}")
    key = jax.random.key(0) if key is None else api.check_key(key)
    gt = np.asarray(toy.gt, bool)
    first, fg_better, fm = first_step(key, toy.noisy, toy.boxes, cfg, gt)
    t = time.perf_counter()
    final = _segment_quiet(key, toy.noisy, toy.boxes, cfg)
    t_final = time.perf_counter() - t
    m = {
        "size": int(gt.shape[0]),
        "lam": float(cfg.lam),
        "linear_size": int(cfg.linear_size),
        "boxes": {"fg": [list(b) for b in toy.boxes.fg], "bg": [list(b) for b in toy.boxes.bg]},
        **{k: v for k, v in fm.items() if k not in ("seconds", "train_steps")},
        "dice_final": metrics.dice(final.mask, gt),
        "num_outer": int(final.num_outer),
        "status": final.status,
        "energies": [float(e) for e in final.energies],
        "mask_changes": [float(c) for c in final.mask_changes],
        "pd_iterations": np.asarray(final.pd_iterations).tolist(),
        "time_first_s": fm["seconds"],
        "time_final_s": t_final,
    }
    return ToyResult(first=first, final=final, fg_better=fg_better, metrics=m)


# ----------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------


def _grey(ax, a, title, lo=None, hi=None):
    a = np.asarray(a, np.float32)
    if lo is None:
        lo, hi = (float(v) for v in np.percentile(a, [0.5, 99.5]))
        if hi <= lo:
            lo, hi = float(a.min()), float(a.max()) + 1e-12
    ax.imshow(a, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _mask(ax, m, title, gt=None):
    ax.imshow(np.asarray(m, float), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if gt is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ax.contour(np.asarray(gt, float), levels=[0.5], colors="cyan", linewidths=0.7)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _draw_boxes(ax, boxes: Boxes):
    from matplotlib.patches import Rectangle

    for bs, col in ((boxes.fg, "yellow"), (boxes.bg, "magenta")):
        for y0, x0, y1, x1 in bs:
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                   edgecolor=col, linewidth=1.0))


def texture_figure(items, *, title: str = ""):
    """Fig. 8/9-style panel, one row per image: noisy (with boxes) | Self2Seg mask |
    Chan–Vese mask | Noise2Fast | Self2Seg composite | clean.

    Args:
      items: a ``(TextureImage, TextureExperiment)`` pair or a sequence of them.
      title: figure title.

    Returns:
      :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    if isinstance(items, tuple) and len(items) == 2 and isinstance(items[0], TextureImage):
        items = [items]
    items = list(items)
    if not items:
        raise ValueError("texture_figure needs at least one (TextureImage, TextureExperiment)")
    fig = Figure(figsize=(16, 3.4 * len(items) + 0.4))
    axes = np.atleast_2d(fig.subplots(len(items), 6))
    for row, (img, exp) in zip(axes, items):
        m = exp.metrics
        lo, hi = (float(v) for v in np.percentile(img.clean, [0.5, 99.5]))
        _grey(row[0], img.noisy, f"{img.left} | {img.right}, noisy\nPSNR {m['psnr_noisy']:.2f}")
        _draw_boxes(row[0], Boxes(**{k: [tuple(b) for b in v] for k, v in m["boxes"].items()}))
        _mask(row[1], exp.self2seg.mask, f"Self2Seg mask (lam {m['lam']:g})\nDice "
              f"{m['dice_self2seg']:.3f}, {np.mean(exp.self2seg.mask):.0%} fg", img.gt)
        if exp.cv_mask is not None:
            _mask(row[2], exp.cv_mask, f"Chan–Vese mask (lam {m['cv_lam']:g})\n"
                  f"Dice {m['dice_chan_vese']:.3f} (either label)", img.gt)
        else:
            row[2].set_axis_off()
        if exp.n2f is not None:
            _grey(row[3], exp.n2f, f"Noise2Fast (whole image)\nPSNR {m['psnr_n2f']:.2f}, "
                  f"SSIM {m['ssim_n2f']:.3f}", lo, hi)
        else:
            row[3].set_axis_off()
        _grey(row[4], exp.self2seg.denoised, f"Self2Seg composite\nPSNR {m['psnr_self2seg']:.2f}, "
              f"SSIM {m['ssim_self2seg']:.3f}", lo, hi)
        _grey(row[5], img.clean, "clean (equal region means)", lo, hi)
    if title:
        fig.suptitle(title)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    else:
        fig.tight_layout()
    return fig


def toy_figure(toy: StripesToy, res: ToyResult, *, title: str = ""):
    """Fig. 1-style panel: noisy (with boxes) | D_F f | D_B f | where the foreground expert is
    better | final segmentation | ground truth.

    Returns:
      :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    m = res.metrics
    fig = Figure(figsize=(16, 3.2))
    ax = fig.subplots(1, 6)
    _grey(ax[0], toy.noisy, "noisy input, boxes (fg yellow, bg magenta)")
    _draw_boxes(ax[0], toy.boxes)
    _grey(ax[1], res.first.denoised_fg, "D_F f (fg expert, 1st W-step)", 0.0, 1.0)
    _grey(ax[2], res.first.denoised_bg, "D_B f (bg expert, 1st W-step)", 0.0, 1.0)
    _mask(ax[3], res.fg_better, f"(f−D_F f)² < (f−D_B f)²\nfg {m['fg_better_in_fg']:.0%}, "
          f"bg {m['bg_better_in_bg']:.0%} correct")
    _mask(ax[4], res.final.mask, f"segmentation ({m['num_outer']} it.)\nDice {m['dice_final']:.3f}",
          toy.gt)
    _mask(ax[5], toy.gt, "ground truth")
    if title:
        fig.suptitle(title)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    else:
        fig.tight_layout()
    return fig
