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
      train_steps: ``(num_outer, 2)`` Adam steps of the (foreground, background) experts
        (``(num_outer, C)`` per class for the multi-class path).
      labels: int32 label image (``(h, w)`` or ``(z, y, x)``); two-class: ``mask`` as 0/1.
      probabilities: float32 ``(C, *spatial)`` relaxed ``u`` on the simplex (two-class:
        ``(1 - u, u)``).
      expert_outputs: float32 ``(C, *image shape)`` expert outputs ``D_i(f)`` (input scale,
        channels where the input has them); two-class: ``(D_B, D_F)``.
      init_labels: int32 initial labels (two-class: ``init_mask``; box starts: 0 outside boxes).

    Class 0 is the background: ``mask = labels > 0`` and ``u = 1 - probabilities[0]``.
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
    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    expert_outputs: np.ndarray | None = None
    init_labels: np.ndarray | None = None


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
    return experts.fit_n2f(params, f, jnp.ones(f.shape[f.ndim - cfg.ndim :], f.dtype), lr, cfg)[1]


def n2f_denoise_normalised(
    key, f: np.ndarray, config: Self2SegConfig, cfg: experts.TrainConfig | None = None
) -> np.ndarray:
    """Noise2Fast on the whole normalised image (jitted; same schedule as the experts).

    ``cfg`` overrides the network (e.g. 3-D or multi-channel, from :func:`segment_multiclass`).
    """
    cfg = cfg or config.train_config("n2f")
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
    num_classes: int | None = None,
    channel_axis: int | None = None,
    volume: bool = False,
    spacing=None,
    class_experts=None,
) -> Self2SegResult:
    """Self2Seg: joint self-supervised segmentation and denoising of one image.

    A 2-D single-channel image with two classes runs the two-class scheme (paper eq. (5)).
    Anything else — ``num_classes > 2``, a channel axis (colour), or ``volume=True`` (a
    ``(z, y, x)`` stack) — runs :func:`segment_multiclass` with the same arguments. A 3-axis
    array is never guessed: pass ``channel_axis`` for ``(h, w, L)`` or ``volume=True`` for
    ``(z, y, x)``; ``(z, y, x, L)`` needs both.

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
    general = (
        (num_classes is not None and num_classes != 2) or channel_axis is not None or volume
        or spacing is not None or class_experts is not None
        or type(init).__name__ == "ClassBoxes"
    )
    if general:
        return segment_multiclass(
            key, image, num_classes=2 if num_classes is None else num_classes, init=init,
            config=config, channel_axis=channel_axis, volume=volume, spacing=spacing,
            class_experts=class_experts,
        )
    _check_num_classes(num_classes)
    nd = getattr(image, "ndim", None)
    if nd == 3:
        raise ValueError(
            f"image has 3 axes {tuple(np.shape(image))}: say what they are — "
            "channel_axis=-1 (or 0) for a colour/multi-channel (h, w, L) image, or volume=True "
            "for a (z, y, x) stack"
        )
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
    result = _result(state, lo, hi, init_mask)
    _check_pd_cap(result.pd_iterations, config)
    return result


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


def _check_pd_cap(pd_iters, config: Self2SegConfig, stacklevel: int = 3) -> None:
    """Warn (``RuntimeWarning``) when a mask step stopped at ``pd_max_iter`` instead of at
    ``pd_tol``: its relaxed mask can be far from the minimiser (e.g. still empty)."""
    check = max(1, config.pd_check_every)
    cap = -(-config.pd_max_iter // check) * check
    hit = [k + 1 for k, it in enumerate(np.asarray(pd_iters).tolist()) if it >= cap]
    if hit:
        import warnings

        warnings.warn(
            f"Self2Seg: the mask step of outer iteration(s) {hit} stopped at its iteration cap "
            f"(pd_max_iter={config.pd_max_iter}) before reaching pd_tol={config.pd_tol:g}; the "
            "mask may be far from the minimiser — raise pd_max_iter (or pd_tol)",
            RuntimeWarning, stacklevel=stacklevel,
        )


def _check_status(status: int, n: int, degenerate: str) -> None:
    """Raise on a non-finite run; warn (``RuntimeWarning``) on a degenerate one."""
    if status == alternating.NONFINITE:
        raise FloatingPointError(
            f"Self2Seg stopped at outer iteration {n}: non-finite values in the expert outputs, "
            "data terms or the mask (try a smaller learning_rate)"
        )
    if status == alternating.DEGENERATE:
        import warnings

        warnings.warn(f"Self2Seg: {degenerate}", RuntimeWarning, stacklevel=4)


def _result(state: alternating.SchemeState, lo: float, hi: float, init_mask) -> Self2SegResult:
    s = jax.device_get(state)
    status = int(s.status)
    n = int(s.it)
    _check_status(status, n, "the mask became empty or full (lam too large, or the experts cannot "
                  "tell the regions apart); returning it as is")
    scale = hi - lo
    u = np.asarray(s.u, np.float32)
    den = np.asarray(s.den, np.float32)
    comp = np.asarray(alternating.composite(u, den))
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
        labels=(np.asarray(s.mask) > 0.5).astype(np.int32),
        probabilities=np.stack([1.0 - u, u]),
        expert_outputs=np.stack([den[1], den[0]]) * scale + lo,
        init_labels=np.asarray(init_mask, np.int32),
    )


# ----------------------------------------------------------------------------------------
# Multi-class / multi-channel / 3-D path (self2seg_jax.multiclass).
# ----------------------------------------------------------------------------------------

MAX_CLASSES = 16


def _check_num_classes(num_classes) -> int:
    if num_classes is None:
        return 2
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not 2 <= int(num_classes) <= MAX_CLASSES:
        raise ValueError(f"num_classes must be between 2 and {MAX_CLASSES}, got {num_classes}")
    return int(num_classes)


def validate_nd_image(image, *, channel_axis, volume: bool, min_size: int = MIN_SIZE):
    """Check an image for the general path; return ``(a, nd)`` with ``a`` float64
    channel-first ``(L, *s)`` (or ``(*s)`` without channels) and ``nd`` spatial axes."""
    if isinstance(image, (str, bytes)):
        raise ValueError("image must be an array, got a string (use self2seg_jax.io.read_image)")
    a = np.asarray(image)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"image must have a real numeric dtype, got {a.dtype}")
    if not isinstance(volume, bool):
        raise ValueError(f"volume must be True or False, got {volume!r}")
    nd = 3 if volume else 2
    if channel_axis is not None:
        if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
            raise ValueError(f"channel_axis must be an integer, got {channel_axis!r}")
        if not -a.ndim <= channel_axis < a.ndim:
            raise ValueError(f"channel_axis {channel_axis} is out of range for an image with {a.ndim} axes")
    want = nd + (channel_axis is not None)
    what = ("(z, y, x)" if volume else "(h, w)") + (" plus a channel axis" if channel_axis is not None else "")
    if a.ndim != want:
        hint = ""
        if a.ndim == 3 and channel_axis is None and not volume:
            hint = " (a 3-axis array needs channel_axis=... for colour or volume=True for a stack)"
        raise ValueError(f"image must be {what}: expected {want} axes, got shape {a.shape}{hint}")
    if channel_axis is not None:
        a = np.moveaxis(a, channel_axis, 0)
        if a.shape[0] > 64:
            raise ValueError(
                f"channel axis has {a.shape[0]} entries (> 64): is channel_axis={channel_axis} right?"
            )
    spatial = a.shape[-nd:]
    if min(spatial) < min_size:
        raise ValueError(f"image spatial shape {spatial} is too small: need at least {min_size} per axis")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"image contains {int(np.size(a) - np.isfinite(a).sum())} non-finite value(s)")
    if a.max() == a.min():
        raise ValueError(f"image is constant (all values equal {a.min():g}): nothing to segment")
    return a, nd


def _check_spacing(spacing, nd):
    if spacing is None:
        return None
    try:
        sp = tuple(float(v) for v in spacing)
    except TypeError:
        raise ValueError(f"spacing must be a sequence of {nd} positive numbers, got {spacing!r}") from None
    if len(sp) != nd or not all(np.isfinite(v) and v > 0 for v in sp):
        raise ValueError(f"spacing must be {nd} positive finite numbers (one per spatial axis), got {spacing!r}")
    return None if all(v == 1.0 for v in sp) else sp


def _class_kinds(class_experts, num_classes, config):
    from self2seg_jax.multiclass import MC_KINDS

    if class_experts is None:
        kinds = (config.bg_expert,) + (config.fg_expert,) * (num_classes - 1)
    else:
        kinds = tuple(class_experts)
        if len(kinds) != num_classes:
            raise ValueError(f"class_experts has {len(kinds)} entries, num_classes is {num_classes}")
    bad = [k for k in kinds if k not in MC_KINDS]
    if bad:
        raise ValueError(f"multi-class experts must be one of {MC_KINDS}, got {bad} (linear experts are two-class only)")
    return kinds


def _first_principal_component(g: np.ndarray) -> np.ndarray:
    """Project an ``(L, *s)`` image on the first principal component of its pixel colours
    (oriented to correlate positively with the channel mean): colour differences that cancel
    in the channel mean (e.g. red vs green regions) stay visible to the threshold."""
    x = g.reshape(g.shape[0], -1).astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    _, vecs = np.linalg.eigh(x @ x.T)
    v = vecs[:, -1]
    proj = v @ x
    if np.dot(proj, x.mean(axis=0)) < 0:
        proj = -proj
    return proj.reshape(g.shape[1:])


def _multiclass_start(key, f, nd, init, num_classes, config, net):
    """``(w0, u0, init_labels)`` for the general path (eager, validated)."""
    from self2seg_jax.initialisation import (
        ClassBoxes,
        check_labels,
        class_weights_from_boxes,
        multiotsu_thresholds,
    )

    spatial = f.shape[-nd:]
    c = num_classes
    if isinstance(init, Boxes):
        if c != 2:
            raise ValueError("Boxes(fg, bg) is a two-class start; use ClassBoxes for num_classes > 2")
        if nd != 2:
            raise ValueError("Boxes are 2-D; use ClassBoxes with (z0, y0, x0, z1, y1, x1) for volumes")
        fg, bg = regions_from_boxes(init, spatial)
        w = np.stack([bg, fg])
    elif isinstance(init, ClassBoxes):
        w = class_weights_from_boxes(init, spatial, c)
    else:
        w = None
    if w is not None:
        cover = w.any(axis=0)
        u0 = np.where(cover[None], w, 1.0 / c).astype(np.float32)
        labels = np.where(cover, np.argmax(w, axis=0), 0).astype(np.int32)
        return w.astype(np.float32), u0, labels
    if isinstance(init, str):
        if init != "otsu":
            raise ValueError(f"unknown init {init!r}: use 'otsu', a label image or ClassBoxes")
        g = n2f_denoise_normalised(key, f, config, net) if config.init_denoise else f
        if g.ndim > nd:
            g = _first_principal_component(g)
        if not np.all(np.isfinite(g)):
            raise FloatingPointError("Noise2Fast denoising of the start produced non-finite values")
        t = multiotsu_thresholds(g, c)
        labels = np.digitize(g, t, right=True).astype(np.int32)
        labels = check_labels(labels, spatial, c, f"multi-level Otsu start ({c} classes)")
    elif isinstance(init, (bool, np.bool_, int, float, np.integer, np.floating)) or init is None:
        raise ValueError(
            f"unknown init {init!r} for the multi-class path: use 'otsu', an integer label "
            "image or ClassBoxes"
        )
    else:
        labels = check_labels(init, spatial, c)
    onehot = (labels[None] == np.arange(c).reshape((c,) + (1,) * nd)).astype(np.float32)
    return onehot, onehot.copy(), labels


def segment_multiclass(
    key: jax.Array,
    image,
    *,
    num_classes: int = 2,
    init="otsu",
    config: Self2SegConfig = Self2SegConfig(),
    channel_axis: int | None = None,
    volume: bool = False,
    spacing=None,
    class_experts=None,
) -> Self2SegResult:
    """Multi-class / multi-channel / 3-D Self2Seg (paper eq. (13); :mod:`self2seg_jax.multiclass`).

    Args:
      key: ``jax.random.key``.
      image: ``(h, w)``, ``(h, w, L)`` (with ``channel_axis``), ``(z, y, x)`` (with
        ``volume=True``) or ``(z, y, x, L)`` (both); min–max normalised over all channels.
      num_classes: ``C >= 2``; class 0 is the background.
      init: ``"otsu"`` (multi-level Otsu of the — by default Noise2Fast-denoised — image; for
        several channels of its first principal component), an integer label image with values ``0..C-1`` (every class present),
        :class:`~self2seg_jax.initialisation.ClassBoxes`, or (two classes, 2-D) ``Boxes``.
      config: :class:`Self2SegConfig` (``lam``, ``mu``, schedule, network, ``data_filter``...);
        class 0 uses ``bg_expert``, the others ``fg_expert``, unless ``class_experts``.
      channel_axis: axis of ``image`` holding channels (e.g. ``-1`` for RGB).
      volume: the spatial axes are ``(z, y, x)``: 3-D TV, 3x3x3 CNN experts, 3-D checkerboard.
      spacing: grid step per spatial axis (e.g. ``(3.0, 1.0, 1.0)`` for z steps three times
        the xy pixel size); scales the finite differences of TV.
      class_experts: per-class kinds, ``"n2f"`` or ``"constant"``.

    Returns:
      :class:`Self2SegResult` with ``labels``, ``probabilities`` and ``expert_outputs``;
      ``mask = labels > 0``; ``denoised`` has the input's layout.
    """
    from self2seg_jax import multiclass

    if not isinstance(config, Self2SegConfig):
        raise ValueError(f"config must be a Self2SegConfig, got {type(config).__name__}")
    config.validate()
    c = _check_num_classes(num_classes)
    if config.data_term != "output":
        raise ValueError(
            f"data_term={config.data_term!r} is implemented for the two-class scheme on 2-D grey "
            "images only; use data_term='output' for multi-class, colour or volume input"
        )
    a, nd = validate_nd_image(image, channel_axis=channel_axis, volume=volume)
    sp = _check_spacing(spacing, nd)
    kinds = _class_kinds(class_experts, c, config)
    key = _check_key(key)
    lo, hi = float(a.min()), float(a.max())
    f = ((a - lo) / (hi - lo)).astype(np.float32)
    channels = a.shape[0] if channel_axis is not None else 0
    net = dataclasses.replace(config.train_config("n2f"), ndim=nd, channels=channels)
    k_init, k_run = jax.random.split(key)
    w0, u0, init_labels = _multiclass_start(k_init, f, nd, init, c, config, net)
    stack = {"always": "vmap", "never": "map", "auto": "map" if jax.default_backend() == "cpu" else "vmap"}
    st = multiclass.MCStatic(
        kinds=kinds, net=net, spacing=sp, data_filter=config.data_filter,
        max_outer=config.max_outer, warm_start=config.warm_start, pd_max_iter=config.pd_max_iter,
        pd_check_every=config.pd_check_every, isotropic_tv=config.isotropic_tv,
        stack=stack[config.stack_experts],
    )
    state = multiclass.run_multiclass(
        k_run, jnp.asarray(f), jnp.asarray(w0), jnp.asarray(u0), config.hyper(), st=st
    )
    s = jax.device_get(state)
    status = int(s.status)
    n = int(s.it)
    _check_status(status, n, "a class became empty (lam too large, too many classes, or experts "
                  "that cannot tell the classes apart); returning the labels as they are")
    _check_pd_cap(np.asarray(s.pd_iters[:n]), config, stacklevel=4)
    scale = hi - lo
    u = np.asarray(s.u, np.float32)
    den = np.asarray(s.den, np.float32)
    comp = np.asarray(multiclass.composite(u, den)) * scale + lo
    labels = np.asarray(s.labels, np.int32)

    def to_input_layout(x, lead=0):
        return np.moveaxis(x, lead, lead + (channel_axis % a.ndim)) if channels else x

    outs = den * scale + lo
    if channels:
        outs = np.moveaxis(outs, 1, 1 + (channel_axis % a.ndim))
    return Self2SegResult(
        mask=labels > 0,
        u=1.0 - u[0],
        denoised=to_input_layout(comp).astype(np.float32),
        energies=np.asarray(s.energies[:n]),
        num_outer=n,
        status=alternating.STATUS_NAMES[status],
        denoised_fg=outs[1].astype(np.float32),
        denoised_bg=outs[0].astype(np.float32),
        init_mask=init_labels > 0,
        mask_changes=np.asarray(s.changes[:n]),
        pd_iterations=np.asarray(s.pd_iters[:n]),
        train_steps=np.asarray(s.train_steps[:n]),
        labels=labels,
        probabilities=u,
        expert_outputs=outs.astype(np.float32),
        init_labels=init_labels,
    )
