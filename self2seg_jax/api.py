"""Public entry points: eager validation, normalisation and the call into the compiled scheme.

``segment`` is an un-jitted wrapper (validate -> normalise -> initial regions -> jitted
:func:`self2seg_jax.alternating.run_scheme` -> status check -> :class:`Self2SegResult`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from self2seg_jax import alternating, experts
from self2seg_jax.config import Self2SegConfig
from self2seg_jax.initialisation import Boxes, check_mask, otsu_threshold, regions_from_boxes

MIN_SIZE = 8


@dataclasses.dataclass(frozen=True)
class Self2SegResult:
    """Result of :func:`segment` (NumPy arrays on the host).

    Attributes:
      mask: ``(h, w)`` bool final segmentation (foreground True), ``u >= threshold``.
      u: ``(h, w)`` float32 relaxed minimiser of the last u-step, in ``[0, 1]``.
      denoised: ``(h, w)`` float32 composite ``u D_F(f) + (1 - u) D_B(f)`` in the input's
        intensity scale.
      energies: ``(num_outer,)`` energy (5) of the thresholded mask after each outer iteration.
      num_outer: number of outer iterations run.
      status: why the scheme stopped (see ``alternating.STATUS_NAMES``).
      denoised_fg, denoised_bg: ``(h, w)`` expert outputs ``D_F(f)``, ``D_B(f)`` (input scale).
      init_mask: ``(h, w)`` bool initial foreground (box union for box initialisation).
      mask_changes: ``(num_outer,)`` fraction of pixels that changed label per iteration.
      pd_iterations: ``(num_outer,)`` primal–dual iterations per u-step.
      train_steps: ``(num_outer, 2)`` Adam steps of the (foreground, background) experts.
    """

    mask: np.ndarray
    u: np.ndarray
    denoised: np.ndarray
    energies: np.ndarray
    num_outer: int
    status: str
    denoised_fg: np.ndarray
    denoised_bg: np.ndarray
    init_mask: np.ndarray
    mask_changes: np.ndarray
    pd_iterations: np.ndarray
    train_steps: np.ndarray


def validate_image(image, *, min_size: int = MIN_SIZE, name: str = "image") -> np.ndarray:
    """Check a 2-D real image eagerly; return it as float64 NumPy. Raises ``ValueError``."""
    if isinstance(image, (str, bytes)):
        raise ValueError(f"{name} must be an array, got a string (use self2seg_jax.io.read_image)")
    try:
        a = np.asarray(image)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} cannot be converted to an array: {e}") from None
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name} must have a real numeric dtype, got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (height, width), got shape {a.shape} with ndim {a.ndim}"
        )
    if min(a.shape) < min_size:
        raise ValueError(
            f"{name} of shape {a.shape} is too small: need at least {min_size}x{min_size} pixels"
        )
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        n = int(np.size(a) - np.isfinite(a).sum())
        raise ValueError(f"{name} contains {n} non-finite value(s) (NaN or Inf)")
    if a.max() == a.min():
        raise ValueError(f"{name} is constant (all pixels equal {a.min():g}): nothing to segment")
    return a


def normalise(a: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Min–max normalise to float32 ``[0, 1]``; returns ``(f, lo, hi)``."""
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / (hi - lo)).astype(np.float32), lo, hi


def min_size_for(config: Self2SegConfig) -> int:
    size = MIN_SIZE
    if "linear" in (config.fg_expert, config.bg_expert):
        size = max(size, 2 * config.linear_size)
    return size


@functools.partial(jax.jit, static_argnames=("cfg",))
def _denoise_full(params, f, lr, cfg: experts.TrainConfig):
    return experts.fit_n2f(params, f, jnp.ones_like(f), lr, cfg)[1]


def n2f_denoise_normalised(key, f: np.ndarray, config: Self2SegConfig) -> np.ndarray:
    """Noise2Fast on the whole normalised image (jitted; same schedule as the experts)."""
    cfg = config.train_config("n2f")
    params = experts.init_params(key, cfg)
    out = _denoise_full(params, jnp.asarray(f), jnp.float32(config.learning_rate), cfg)
    out = np.asarray(out)
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("Noise2Fast denoising produced non-finite values")
    return out


def _image_to_threshold(key, f: np.ndarray, config: Self2SegConfig) -> np.ndarray:
    """The (optionally Noise2Fast-denoised) image, min–max normalised, for threshold inits."""
    g = n2f_denoise_normalised(key, f, config) if config.init_denoise else f
    return (g - g.min()) / max(float(g.max() - g.min()), 1e-12)


def initial_regions(key, f: np.ndarray, init, config: Self2SegConfig):
    """Resolve ``init`` into ``(fg, bg)`` bool arrays (eager, validated).

    ``bg`` is None when the background is the complement of ``fg`` (every init but Boxes).
    """
    shape = f.shape
    if isinstance(init, Boxes):
        fg, bg = regions_from_boxes(init, shape)
        return fg, bg
    if isinstance(init, str):
        if init != "otsu":
            raise ValueError(
                f"unknown init {init!r}: use 'otsu', a float threshold in (0, 1), a boolean "
                "(h, w) mask or self2seg_jax.Boxes"
            )
        g = _image_to_threshold(key, f, config)
        m = g > otsu_threshold(g)
        return check_mask(m, shape, "Otsu initial mask"), None
    if isinstance(init, (bool, np.bool_)):
        raise ValueError(f"unknown init {init!r}")
    if isinstance(init, (int, float, np.integer, np.floating)):
        eps = float(init)
        if not (0.0 < eps < 1.0):
            raise ValueError(f"threshold init must be in (0, 1) (image is min-max normalised), got {eps}")
        g = _image_to_threshold(key, f, config)
        return check_mask(g > eps, shape, f"initial mask (threshold {eps})"), None
    if init is None:
        raise ValueError("init is None: use 'otsu', a float threshold, a boolean mask or Boxes")
    try:
        arr = np.asarray(init)
    except Exception:
        raise ValueError(f"unknown init of type {type(init).__name__}") from None
    if arr.ndim != 2:
        raise ValueError(
            f"unknown init: arrays must be boolean (h, w) masks, got shape {arr.shape}"
        )
    return check_mask(arr, shape), None


def segment(
    key: jax.Array,
    image,
    *,
    init="otsu",
    config: Self2SegConfig = Self2SegConfig(),
) -> Self2SegResult:
    """Self2Seg: joint self-supervised segmentation and denoising of one 2-D image.

    Args:
      key: ``jax.random.key``; with a fixed key the result is deterministic.
      image: ``(h, w)`` real array (any dtype); min–max normalised to ``[0, 1]`` inside.
      init: ``"otsu"`` (Otsu threshold of the — by default Noise2Fast-denoised — image), a
        float threshold in ``(0, 1)`` on the normalised image, a boolean ``(h, w)`` mask, or
        :class:`Boxes` of foreground / background boxes.
      config: :class:`Self2SegConfig`.

    Returns:
      :class:`Self2SegResult`.

    Raises:
      ValueError: invalid image, init or config (raised before anything is compiled).
      FloatingPointError: the compiled loop met non-finite values.

    Example:
      >>> import jax, self2seg_jax as s2s
      >>> img, gt = s2s.data.load_sample(crop=(0, 0, 64, 64))
      >>> res = s2s.segment(jax.random.key(0), img,
      ...                   config=s2s.Self2SegConfig(train_max_steps=20, train_min_steps=10))
      >>> res.mask.shape, res.mask.dtype
      ((64, 64), dtype('bool'))
    """
    if not isinstance(config, Self2SegConfig):
        raise ValueError(f"config must be a Self2SegConfig, got {type(config).__name__}")
    config.validate()
    a = validate_image(image, min_size=min_size_for(config))
    key = _check_key(key)
    f, lo, hi = normalise(a)
    k_init, k_run = jax.random.split(key)
    fg, bg = initial_regions(k_init, f, init, config)
    init_mask = fg.copy()
    if bg is None:
        bg = ~fg
    w_fg, w_bg = fg.astype(np.float32), bg.astype(np.float32)
    state = alternating.run_scheme(
        k_run, jnp.asarray(f), jnp.asarray(w_fg), jnp.asarray(w_bg), jnp.asarray(w_fg),
        config.hyper(), st=config.static(),
    )
    return _result(state, lo, hi, init_mask)


def _check_key(key):
    if isinstance(key, (int, np.integer)):
        raise ValueError("key must be a jax.random.key (e.g. jax.random.key(0)), got an int")
    try:
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            return key
        if key.shape == (2,) and key.dtype == jnp.uint32:
            return jax.random.wrap_key_data(key)
    except AttributeError:
        pass
    raise ValueError(f"key must be a jax.random.key, got {type(key).__name__}")


def _result(state: alternating.SchemeState, lo: float, hi: float, init_mask) -> Self2SegResult:
    s = jax.device_get(state)
    status = int(s.status)
    n = int(s.it)
    if status == alternating.NONFINITE:
        raise FloatingPointError(
            f"Self2Seg stopped at outer iteration {n}: non-finite values in the expert outputs, "
            "data terms or the mask (try a smaller learning_rate)"
        )
    scale = hi - lo
    u = np.asarray(s.u, np.float32)
    den = np.asarray(s.den, np.float32)
    comp = np.asarray(alternating.composite(u, den))
    if status == alternating.DEGENERATE:
        import warnings

        warnings.warn(
            "Self2Seg: the mask became empty or full (lam too large, or the experts cannot tell "
            "the regions apart); returning it as is",
            RuntimeWarning,
            stacklevel=3,
        )
    return Self2SegResult(
        mask=np.asarray(s.mask) > 0.5,
        u=u,
        denoised=(comp * scale + lo).astype(np.float32),
        energies=np.asarray(s.energies[:n]),
        num_outer=n,
        status=alternating.STATUS_NAMES[status],
        denoised_fg=(den[0] * scale + lo).astype(np.float32),
        denoised_bg=(den[1] * scale + lo).astype(np.float32),
        init_mask=np.asarray(init_mask, bool),
        mask_changes=np.asarray(s.changes[:n]),
        pd_iterations=np.asarray(s.pd_iters[:n]),
        train_steps=np.asarray(s.train_steps[:n]),
    )
