"""Public entry point :func:`segment` and its result.

The data path is one straight line: validate (:func:`validate_image`, eager, before anything
is traced) -> normalise to ``[0, 1]`` -> initial regions (:mod:`self2seg_jax.initialisation`)
-> the compiled scheme (:func:`self2seg_jax.alternating.run`) -> :class:`Self2SegResult`
(:func:`build_result`, back in the input's intensity scale and layout).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from self2seg_jax import alternating, aot, experts, initialisation
from self2seg_jax import progress as _progress
from self2seg_jax.config import Self2SegConfig

MIN_SIZE = 8
MAX_CLASSES = 16
MAX_CHANNELS = 64


@dataclasses.dataclass(frozen=True)
class Self2SegResult:
    """Result of :func:`segment` (NumPy arrays on the host; ``*s`` = the spatial shape).

    Attributes:
      labels: ``(*s)`` int32 class of every pixel (0 = background); two classes: the mask
        ``u >= threshold`` as 0/1.
      probabilities: ``(C, *s)`` float32 relaxed minimiser of the last mask step, on the
        simplex at every pixel (two classes: ``(1 - u, u)``).
      denoised: the composite ``sum_i u_i D_i(f)`` in the input's intensity scale and layout.
      expert_outputs: ``(C, ...)`` float32 expert outputs ``D_i(f)`` (input scale; each in the
        input's layout).
      energies: ``(num_outer,)`` energy (5)/(13) of the labels after each outer iteration.
      num_outer: outer iterations run; status: why the scheme stopped ("mask became empty or
        full": the last step emptied a class and was rejected — labels, probabilities and
        denoised image are those of the iteration before, or of the start; its energy and label
        change are the last entries of ``energies`` / ``mask_changes``).
      mask_changes: ``(num_outer,)`` fraction of pixels that changed label per iteration.
      pd_iterations: ``(num_outer,)`` primal–dual iterations per mask step.
      train_steps: ``(num_outer, C)`` Adam steps of each class expert per W-step.
      init_labels: ``(*s)`` int32 initial labels (box starts: 0 outside the boxes).
      lam: the TV weight the run used (``lam="auto"``: the value chosen for this image;
        :mod:`self2seg_jax.lam_auto`).

    Derived (properties): ``mask = labels > 0``; ``u = 1 - probabilities[0]`` (the relaxed
    foreground); ``denoised_fg = expert_outputs[1]``, ``denoised_bg = expert_outputs[0]``;
    ``init_mask = init_labels > 0``.

    From :func:`self2seg_jax.segment_batch` (``batched=True``): every array has a leading
    batch axis ``B``; ``num_outer`` is ``(B,)`` int, ``status`` a tuple of ``B`` strings, and the
    per-iteration arrays are padded to ``max_outer`` rows (NaN energies, zeros elsewhere),
    ``lam`` is ``(B,)`` float.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    denoised: np.ndarray
    expert_outputs: np.ndarray
    energies: np.ndarray
    num_outer: int
    status: str
    mask_changes: np.ndarray
    pd_iterations: np.ndarray
    train_steps: np.ndarray
    init_labels: np.ndarray
    lam: float | np.ndarray = float("nan")
    batched: bool = False

    def _class(self, a: np.ndarray, k: int) -> np.ndarray:
        return a[:, k] if self.batched else a[k]

    def item(self, i: int) -> Self2SegResult:
        """Image ``i`` of a batched result, as :func:`segment` returns it (per-iteration rows
        cut to its own ``num_outer``)."""
        if not self.batched:
            raise ValueError("item() takes an image of a batched result (segment_batch)")
        k = int(self.num_outer[i])
        per_iter = ("energies", "mask_changes", "pd_iterations", "train_steps")
        kw = {f.name: getattr(self, f.name)[i][:k] if f.name in per_iter
              else getattr(self, f.name)[i] for f in dataclasses.fields(self)
              if f.name != "batched"}
        kw["num_outer"] = k
        return Self2SegResult(**kw)

    @property
    def mask(self) -> np.ndarray:
        return self.labels > 0

    @property
    def u(self) -> np.ndarray:
        return 1.0 - self._class(self.probabilities, 0)

    @property
    def denoised_fg(self) -> np.ndarray:
        return self._class(self.expert_outputs, 1)

    @property
    def denoised_bg(self) -> np.ndarray:
        return self._class(self.expert_outputs, 0)

    @property
    def init_mask(self) -> np.ndarray:
        return self.init_labels > 0


# ----------------------------------------------------------------------------------------
# validation (eager, host side)
# ----------------------------------------------------------------------------------------


def validate_image(image, *, channel_axis=None, volume: bool = False, min_size: int = MIN_SIZE):
    """Check an image and return ``(a, ndim)``: ``a`` float64, channel-first ``(L, *s)`` (or
    ``(*s)`` without a channel axis), ``ndim`` its number of spatial axes (2, or 3 with
    ``volume``). Raises ``ValueError`` naming the problem."""
    if isinstance(image, (str, bytes)):
        raise ValueError("image must be an array, got a string (use self2seg_jax.io.read_image)")
    try:
        a = np.asarray(image)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise ValueError(f"image cannot be converted to an array: {e}") from None
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer)
                               or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"image must have a real numeric dtype, got {a.dtype}")
    if not isinstance(volume, bool):
        raise ValueError(f"volume must be True or False, got {volume!r}")
    nd = 3 if volume else 2
    if channel_axis is not None:
        if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
            raise ValueError(f"channel_axis must be an integer, got {channel_axis!r}")
        if not -a.ndim <= channel_axis < a.ndim:
            raise ValueError(f"channel_axis {channel_axis} is out of range for an image with "
                             f"{a.ndim} axes")
    want = nd + (channel_axis is not None)
    if a.ndim != want:
        if a.ndim == 3 and channel_axis is None and not volume:
            raise ValueError(
                f"image has 3 axes {a.shape}: say what they are — channel_axis=-1 (or 0) for a "
                "colour/multi-channel (h, w, L) image, or volume=True for a (z, y, x) stack")
        what = ("(z, y, x)" if volume else "2-D (height, width)") + (
            " plus a channel axis" if channel_axis is not None else "")
        raise ValueError(f"image must be {what}: expected {want} axes, got shape {a.shape}")
    if channel_axis is not None:
        a = np.moveaxis(a, channel_axis, 0)
        if a.shape[0] > MAX_CHANNELS:
            raise ValueError(f"channel axis has {a.shape[0]} entries (> {MAX_CHANNELS}): is "
                             f"channel_axis={channel_axis} right?")
    check_size(a.shape[a.ndim - nd:], min_size)
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"image contains {int(np.size(a) - np.isfinite(a).sum())} non-finite "
                         "value(s) (NaN or Inf)")
    if a.max() == a.min():
        raise ValueError(f"image is constant (all values equal {a.min():g}): nothing to segment")
    return a, nd


def check_size(spatial: tuple, min_size: int) -> None:
    if min(spatial) < min_size:
        raise ValueError(f"image of spatial shape {tuple(spatial)} is too small: need at least "
                         f"{min_size} pixels per axis")


QUANTILE = 0.1  # percent of the pixels clipped at each end by normalise(how="quantile")


def normalise(a: np.ndarray, how: str) -> tuple[np.ndarray, float, float]:
    """Normalise to float32 ``[0, 1]``; returns ``(f, lo, hi)`` with ``f = (a - lo) / (hi - lo)``.

    ``"minmax"``: ``lo, hi`` = min and max (the paper). ``"quantile"``: the 0.1 and 99.9
    percentiles, values beyond clipped — the scale then does not grow with the number of
    pixels (a larger image has more extreme noise values), so ``lam`` means the same on a
    patch and on the whole image; falls back to min–max where the percentiles coincide.
    """
    lo, hi = float(a.min()), float(a.max())
    if how == "quantile":
        qlo, qhi = (float(v) for v in np.percentile(a, [QUANTILE, 100 - QUANTILE]))
        if qhi > qlo:
            lo, hi = qlo, qhi
            a = np.clip(a, lo, hi)
    elif how != "minmax":
        raise ValueError(f"normalise must be 'minmax' or 'quantile', got {how!r}")
    return ((a - lo) / (hi - lo)).astype(np.float32), lo, hi


def check_key(key) -> jax.Array:
    """A typed ``jax.random.key`` (legacy ``uint32[2]`` keys are wrapped); ``ValueError`` else."""
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


def _check_num_classes(num_classes) -> int:
    if num_classes is None:
        return 2
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not 2 <= int(num_classes) <= MAX_CLASSES:
        raise ValueError(f"num_classes must be between 2 and {MAX_CLASSES}, got {num_classes}")
    return int(num_classes)


def _check_spacing(spacing, nd):
    if spacing is None:
        return None
    try:
        sp = tuple(float(v) for v in spacing)
    except TypeError:
        raise ValueError(f"spacing must be a sequence of {nd} positive numbers, got "
                         f"{spacing!r}") from None
    if len(sp) != nd or not all(np.isfinite(v) and v > 0 for v in sp):
        raise ValueError(f"spacing must be {nd} positive finite numbers (one per spatial axis), "
                         f"got {spacing!r}")
    return None if all(v == 1.0 for v in sp) else sp


# ----------------------------------------------------------------------------------------
# segment
# ----------------------------------------------------------------------------------------


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
    progress: Callable[[_progress.Event], None] | None = None,
    mesh=None,
) -> Self2SegResult:
    """Self2Seg: joint self-supervised segmentation and denoising of one image.

    Args:
      key: ``jax.random.key``; with a fixed key the result is deterministic.
      image: ``(h, w)``, ``(h, w, L)`` (with ``channel_axis``), ``(z, y, x)`` (with
        ``volume=True``) or ``(z, y, x, L)`` (both), any real dtype; scaled (over all channels) to
        ``[0, 1]`` inside as ``config.normalise`` says. A 3-axis array is never guessed.
      init: ``"otsu"`` (Otsu / multi-level Otsu of the image — of its Noise2Fast-denoised
        version with ``config.init_denoise``; colour: of its first principal component; the
        foreground is the brighter side), ``"otsu_dark"`` (the same for objects darker than
        their background: the classes in reverse order), a threshold in ``(0, 1)`` on the
        normalised image (two classes), a boolean mask or integer label image, :class:`Boxes`
        (two classes, 2-D) or :class:`ClassBoxes`.
      config: :class:`Self2SegConfig`.
      num_classes: ``C >= 2`` (default 2; paper eq. (13) for more); class 0 is the background.
      channel_axis: axis of ``image`` holding colour / channels.
      volume: the spatial axes are ``(z, y, x)`` (3-D TV, 3x3x3 CNN experts).
      spacing: grid step per spatial axis (e.g. ``(3.0, 1.0, 1.0)``), scales TV's differences.
      class_experts: expert kind per class (default: ``bg_expert`` for class 0, ``fg_expert``
        for the others).
      progress: ``callback(event)`` called after every outer iteration
        (:class:`self2seg_jax.progress.Event`; the outer loop is then driven from Python,
        :func:`self2seg_jax.alternating.iterate`, with the same result); with
        ``config.progress`` and no callback, a :class:`self2seg_jax.progress.Bar` shows the
        run (auto-detected: HTML in a notebook, a live line on a terminal's stderr, else one
        line per iteration), with ``config.progress_training`` down to training steps.
      mesh: a :class:`jax.sharding.Mesh` with an axis ``"space"``
        (:func:`self2seg_jax.sharding.space_mesh`): the image, the mask and the experts'
        outputs are split along the first spatial axis over its devices
        (:mod:`self2seg_jax.sharding`; the result equals the unsharded run up to float
        rounding). Default: one device.

    Returns:
      :class:`Self2SegResult`.

    Raises:
      ValueError: invalid image, init, key or options (raised before anything is compiled).
      FloatingPointError: the compiled loop met non-finite values.

    Example:
      >>> import jax, self2seg_jax as s2s
      >>> img, gt = s2s.data.load_sample(crop=(0, 0, 64, 64))
      >>> res = s2s.segment(jax.random.key(0), img,
      ...                   config=s2s.Self2SegConfig(train_max_steps=20, train_min_steps=10))
      >>> res.mask.shape, res.mask.dtype
      ((64, 64), dtype('bool'))
    """
    _check_config(config)
    if progress is None and config.progress:
        bar = _progress.Bar(config.max_outer, config.train_max_steps, name="self2seg",
                            prefix="[self2seg] ")
        listen = (_progress.training_listener(bar.training) if config.progress_training
                  else contextlib.nullcontext())
        try:
            with listen:
                return segment(key, image, init=init, config=config, num_classes=num_classes,
                               channel_axis=channel_axis, volume=volume, spacing=spacing,
                               class_experts=class_experts, progress=bar.outer, mesh=mesh)
        finally:
            bar.close()
    callback = progress
    if callback is not None and not callable(callback):
        raise ValueError(f"progress must be a callable taking a progress.Event, got {callback!r}")
    if mesh is not None:
        from self2seg_jax import sharding

        sharding.check_mesh(mesh)
    p = prepare(key, image, init=init, config=config, num_classes=num_classes,
                channel_axis=channel_axis, volume=volume, spacing=spacing,
                class_experts=class_experts)
    if mesh is not None:
        config = resolve_lam(p, config)
        args = (p.k_run, jnp.asarray(p.f), jnp.asarray(p.start.weights),
                jnp.asarray(p.start.labels), config.hyper(), p.spec)
        state = sharding.host_state(sharding.run_space(*args, mesh) if callback is None
                                    else sharding.iterate_space(*args, mesh, callback))
    else:
        state, config = run_prepared(p, config, callback)
    return finish(state, p, config)


def segment_iter(key, image, *, init="otsu", config: Self2SegConfig = Self2SegConfig(),
                 num_classes: int | None = None, channel_axis: int | None = None,
                 volume: bool = False, spacing=None, class_experts=None):
    """:func:`segment` as a generator: yields a :class:`self2seg_jax.progress.Event` after every
    outer iteration and returns the :class:`Self2SegResult` (``StopIteration.value``). Input
    errors are raised at the first ``next``, before anything is compiled; closing the
    generator stops the run between two outer iterations (how a GUI cancels). Arguments as
    :func:`segment`; the result equals ``segment``'s for the same key.
    """
    _check_config(config)
    p = prepare(key, image, init=init, config=config, num_classes=num_classes,
                channel_axis=channel_axis, volume=volume, spacing=spacing,
                class_experts=class_experts)
    config, gen = _scheme_states(p, config)
    state = yield from alternating.events(gen)
    return finish(state, p, config)


def _check_config(config) -> None:
    if not isinstance(config, Self2SegConfig):
        raise ValueError(f"config must be a Self2SegConfig, got {type(config).__name__}")


class Prepared(NamedTuple):
    """Everything :func:`segment` computes before the compiled scheme runs (host side)."""

    spec: alternating.Spec
    k_run: jax.Array
    f: np.ndarray  # normalised image, channel-first
    start: initialisation.Start
    lo: float
    hi: float
    channel_axis: int | None  # of the input, non-negative


def prepare(key, image, *, init="otsu", config: Self2SegConfig = Self2SegConfig(),
            num_classes: int = 2, channel_axis: int | None = None, volume: bool = False,
            spacing=None, class_experts=None) -> Prepared:
    """Validate, normalise and start one image (the steps of :func:`segment` before the
    scheme; raises ``ValueError`` on bad input before anything is compiled)."""
    _check_config(config)
    c = _check_num_classes(num_classes)
    a, nd = validate_image(image, channel_axis=channel_axis, volume=volume)
    sp = _check_spacing(spacing, nd)
    channels = a.shape[0] if channel_axis is not None else 0
    spec = config.spec(num_classes=c, ndim=nd, channels=channels, spacing=sp,
                       class_experts=class_experts)
    check_size(a.shape[a.ndim - nd:], config.min_image_size(spec.kinds))
    key = check_key(key)
    f, lo, hi = normalise(a, config.normalise)
    k_init, k_run = jax.random.split(key)
    denoise = None
    if config.init_denoise:
        denoise = lambda k, x: experts.denoise(k, x, config.learning_rate, spec.train)  # noqa: E731
    start = initialisation.start(k_init, f, init, num_classes=c, ndim=nd, denoise=denoise)
    return Prepared(spec, k_run, f, start, lo, hi,
                    None if channel_axis is None else channel_axis % (nd + 1))


def _auto_first_step(p: Prepared, config: Self2SegConfig):
    """``(config with the chosen lam, (initial state, first W-step))`` of ``lam="auto"``."""
    from self2seg_jax import lam_auto

    hyper = config.replace(lam=lam_auto.LAM_GRID[0]).hyper()  # the W-step ignores lam
    f, st = jnp.asarray(p.f), {"spec": p.spec}
    first = aot.call(alternating.first_w_step, "alternating.first_w_step", st, p.k_run, f,
                     jnp.asarray(p.start.weights), jnp.asarray(p.start.labels), hyper)
    sigma = aot.call(lam_auto.scale_of, "lam_auto.scale_of", st, first[1], f)
    return config.replace(lam=lam_auto.choose(sigma)), first


def _scheme_states(p: Prepared, config: Self2SegConfig):
    """``(config with the lam used, generator of the state after each outer iteration)``
    (:func:`self2seg_jax.alternating.states`; ``lam="auto"`` goes on from the W-step it chose
    with)."""
    f = jnp.asarray(p.f)
    if config.lam == "auto":
        config, first = _auto_first_step(p, config)
        return config, alternating.states_from_w_step(*first, f, config.hyper(), p.spec)
    return config, alternating.states(p.k_run, f, jnp.asarray(p.start.weights),
                                      jnp.asarray(p.start.labels), config.hyper(), p.spec)


def run_prepared(p: Prepared, config: Self2SegConfig, callback: Callable | None = None):
    """The scheme on a prepared image, on one device: ``(final state, config with the lam
    used)``. Without ``callback`` one compiled call (:func:`self2seg_jax.alternating.run`, or
    ``run_from_w_step`` after the W-step that ``lam="auto"`` chose with); with it the outer loop
    is driven from Python and ``callback(event)`` called after every iteration."""
    if config.lam == "auto" and callback is not None:
        config, gen = _scheme_states(p, config)
        return alternating.follow(alternating.events(gen), callback), config
    f = jnp.asarray(p.f)
    if config.lam == "auto":
        config, first = _auto_first_step(p, config)
        return aot.call(alternating.run_from_w_step, "alternating.run_from_w_step",
                        {"spec": p.spec}, *first, f, config.hyper()), config
    args = (p.k_run, f, jnp.asarray(p.start.weights), jnp.asarray(p.start.labels),
            config.hyper(), p.spec)
    if callback is not None:
        return alternating.iterate(*args, callback), config
    return aot.call(alternating.run, "alternating.run", {"spec": p.spec}, *args[:-1]), config


def finish(state: alternating.State, p: Prepared, config: Self2SegConfig) -> Self2SegResult:
    """The :class:`Self2SegResult` of a final state of the prepared image ``p`` run with
    ``config`` (whose ``lam`` is the value used), after the primal–dual cap check."""
    result = build_result(state, p.spec, lo=p.lo, hi=p.hi, init_labels=p.start.labels,
                          channel_axis=p.channel_axis, lam=config.lam,
                          final=refine(state, p, config) if config.refine_size else None)
    check_pd_cap(result.pd_iterations, config)
    check_drift(result.mask_changes, result.status)
    return result


def refine(state: alternating.State, p: Prepared, config: Self2SegConfig):
    """The local Chan–Vese step of ``config.refine_size`` after a finished scheme:
    ``(state, spec)`` of ``config.refine_iters`` outer iterations (fewer when the mask settles;
    local means recomputed from the mask each time) whose experts are every class's leave-one-out
    local mean over a ``refine_size`` window (``"smooth"`` experts), started from the scheme's
    labels, with the same ``lam`` and no reference-mask term (``mu = 0``), or None when there is
    nothing to refine (the scheme's labels miss a class, their :func:`contrast_to_noise` is
    below ``config.refine_min_cnr``, or the first step emptied a class or a step met
    non-finite values: the scheme's labels stand).

    A flexible CNN expert explains the blurred rim and the glow around bright objects better
    than a constant background does, so the scheme's masks run large; local means place each
    boundary midway between the object's own level and its surroundings' (dim objects keep
    their own level, unlike one region mean). ``state``: final scheme state (host or device)."""
    labels = np.asarray(jax.device_get(state.labels))
    if np.unique(labels).size < p.spec.num_classes:
        return None
    if (config.refine_min_cnr > 0
            and contrast_to_noise(p.f, labels, p.spec.num_classes) < config.refine_min_cnr):
        return None
    train = dataclasses.replace(p.spec.train, smooth_size=config.refine_size)
    n = config.refine_iters
    spec = dataclasses.replace(p.spec, kinds=("smooth",) * p.spec.num_classes, train=train,
                               max_outer=n, data_filter=1, blind_spot=False)
    start = initialisation.start(p.k_run, p.f, labels, num_classes=spec.num_classes,
                                 ndim=spec.ndim, denoise=None)
    step_config = config.replace(mu=0.0, max_outer=n)
    final, _ = run_prepared(p._replace(spec=spec, start=start), step_config)
    status = int(final.status)
    if status == alternating.NONFINITE or (status == alternating.DEGENERATE
                                           and int(final.it) <= 1):
        return None  # (a later step that empties a class leaves the labels before it)
    return final, spec


def contrast_to_noise(f: np.ndarray, labels: np.ndarray, num_classes: int,
                      max_samples: int = 1 << 21) -> float:
    """The smallest contrast between two classes over the image's noise (host side).

    Contrast: the Euclidean distance between two classes' per-channel medians of ``f``;
    noise: the root mean square over channels of a robust per-pixel noise std, the median
    absolute neighbour difference along every spatial axis times ``1.4826 / sqrt(2)`` (exact
    for Gaussian noise on a locally flat image; edges and texture add a little). ``inf`` when
    the noise estimate is 0, ``0`` when a class is empty. Images with more than
    ``max_samples`` pixels use every ``k``-th pixel (and difference) of the flattened arrays,
    ``k = ceil(pixels / max_samples)``: bounded time and memory, deterministic.

    Args:
      f: ``(*s)`` or ``(C, *s)`` float image (``C`` channels first, as :class:`Prepared`).
      labels: ``(*s)`` integer labels in ``[0, num_classes)``.
      num_classes: number of classes.
    """
    lab = np.asarray(labels)
    x = np.asarray(f, np.float32).reshape((-1,) + lab.shape)  # (C, *s)
    step = -(-lab.size // max_samples)
    sig2 = []
    for ch in x:
        d = np.concatenate([np.abs(np.diff(ch, axis=a)).ravel()[::step]
                            for a in range(ch.ndim)])
        sig2.append((1.4826 / np.sqrt(2.0) * float(np.median(d))) ** 2)
    sigma = float(np.sqrt(np.mean(sig2)))
    flat_lab = lab.ravel()[::step]
    flat_x = x.reshape(x.shape[0], -1)[:, ::step]
    med = []
    for k in range(num_classes):
        sel = flat_lab == k
        if not sel.any():
            return 0.0
        med.append(np.median(flat_x[:, sel], axis=1).astype(np.float64))
    gap = min(float(np.linalg.norm(med[i] - med[j]))
              for i in range(num_classes) for j in range(i + 1, num_classes))
    return float("inf") if sigma == 0.0 else gap / sigma


def resolve_lam(p: Prepared, config: Self2SegConfig) -> Self2SegConfig:
    """``config`` with ``lam="auto"`` replaced by the value chosen for the prepared image
    ``p`` (:mod:`self2seg_jax.lam_auto`: one W-step from the run's own key and start, then a
    noise scale of its data terms), for runs that cannot take over that W-step (a batch over
    several devices, a "space" mesh): the run recomputes it and equals the fixed-``lam`` run
    with the chosen value. :func:`run_prepared` goes on from it instead. Other configs are
    returned as they are."""
    return config if config.lam != "auto" else _auto_first_step(p, config)[0]


segment_multiclass = segment  # the 0.1 name of the multi-class entry point (same function)


def build_result(state: alternating.State, spec: alternating.Spec, *, lo: float, hi: float,
                 init_labels, channel_axis: int | None = None,
                 lam: float = float("nan"), final=None) -> Self2SegResult:
    """The :class:`Self2SegResult` of a final scheme state: host arrays in the input's
    intensity scale (``lo``, ``hi`` of the normalisation) and layout (``channel_axis`` of the
    input, normalised to be non-negative; None without channels). Raises on a non-finite run,
    warns on a degenerate one. ``final``: ``(state, spec)`` of a step after the scheme
    (:func:`refine`) whose labels and relaxed mask replace the scheme's (the denoised image
    then mixes the scheme's expert outputs by them; the record stays the scheme's)."""
    s = jax.device_get(state)
    status, n = int(s.status), int(s.it)
    if status == alternating.NONFINITE:
        raise FloatingPointError(
            f"Self2Seg stopped at outer iteration {n}: non-finite values in the expert outputs, "
            "data terms or the mask (try a smaller learning_rate)")
    if status == alternating.DEGENERATE:
        warnings.warn(f"Self2Seg: a class became empty at outer iteration {n} (lam too large, "
                      "too many classes, or experts that cannot tell the regions apart); "
                      "returning the labels of the iteration before"
                      + (" (the start)" if n == 1 else ""), RuntimeWarning, stacklevel=3)
    shown, shown_spec = (s, spec) if final is None else (jax.device_get(final[0]), final[1])
    labels = np.asarray(shown.labels, np.int32)
    probs = np.asarray(alternating.probabilities(shown, shown_spec), np.float32)
    den = np.asarray(s.den, np.float32)
    comp = np.asarray(alternating.composite(probs, den))
    scale = hi - lo
    outs, comp = den * scale + lo, comp * scale + lo
    if channel_axis is not None:  # channel-first inside -> the input's layout
        outs, comp = np.moveaxis(outs, 1, 1 + channel_axis), np.moveaxis(comp, 0, channel_axis)
    return Self2SegResult(
        labels=labels, probabilities=probs,
        denoised=comp.astype(np.float32), expert_outputs=outs.astype(np.float32),
        energies=np.asarray(s.energies[:n]), num_outer=n, status=alternating.STATUS_NAMES[status],
        mask_changes=np.asarray(s.changes[:n]), pd_iterations=np.asarray(s.pd_iters[:n]),
        train_steps=np.asarray(s.train_steps[:n]), init_labels=np.asarray(init_labels, np.int32),
        lam=float(lam),
    )


#: :func:`check_drift`: label changes growing over this many last iterations ...
DRIFT_RUN = 3
#: ... the last of them above this fraction of the pixels.
DRIFT_MIN_CHANGE = 0.01


def drift_message(changes, status: str) -> str | None:
    """The drift warning's text for a run with these label changes and status, or ``None``.

    A run of more than :data:`DRIFT_RUN` outer iterations that hit ``max_outer`` while its
    mask was changing by *more* at each of its last :data:`DRIFT_RUN` iterations than at the
    one before (the last change above :data:`DRIFT_MIN_CHANGE` of the pixels) was drifting,
    typically because one expert explains the other region too (a background that is not
    flat, for a constant background expert); the returned mask can be far worse than an
    earlier one.

    Label-free and result-neutral. Of the 69 recorded development runs in
    ``benchmarks/results/trajectories`` it fires on the two whose Dice fell through their last
    iterations — the bundled 3-D stack and a DSB2018 tuning patch at noise 10 — and on none of
    the others (the rule was written after those runs were seen).

    Args:
      changes: ``(num_outer,)`` fraction of labels changed per outer iteration.
      status: the run's status name (:data:`self2seg_jax.alternating.STATUS_NAMES`).
    """
    c = np.asarray(changes, np.float64).ravel()
    if status != alternating.STATUS_NAMES[alternating.MAX_OUTER] or c.size <= DRIFT_RUN:
        return None
    tail = c[-DRIFT_RUN:]
    if not (np.all(np.diff(tail) > 0) and tail[-1] > DRIFT_MIN_CHANGE):
        return None
    return ("Self2Seg: the mask was still drifting when max_outer stopped the run (labels "
            f"changed {', '.join(f'{100 * x:.1f} %' for x in tail)} of the pixels in the last "
            f"{DRIFT_RUN} iterations, more each time): one expert may be explaining both "
            "regions (e.g. a background that is not flat). An earlier iterate may be better "
            "(the same key with a smaller max_outer returns one; the change was smallest after "
            f"iteration {int(np.argmin(c)) + 1}); a larger lam or mu, or constant experts "
            "(fg_expert='constant', plain Chan-Vese), hold the mask.")


def check_drift(changes, status: str) -> None:
    """Warn (``RuntimeWarning``) with :func:`drift_message` when the run was drifting."""
    msg = drift_message(changes, status)
    if msg is not None:
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def check_pd_cap(pd_iters, config: Self2SegConfig) -> None:
    """Warn (``RuntimeWarning``) when a mask step stopped at ``pd_max_iter`` instead of at
    ``pd_tol``: its relaxed mask can be far from the minimiser (e.g. still empty)."""
    check = config.pd_check_every
    cap = -(-config.pd_max_iter // check) * check
    hit = [k + 1 for k, it in enumerate(np.asarray(pd_iters).tolist()) if it >= cap]
    if hit:
        warnings.warn(
            f"Self2Seg: the mask step of outer iteration(s) {hit} stopped at its iteration cap "
            f"(pd_max_iter={config.pd_max_iter}) before reaching pd_tol={config.pd_tol:g}; the "
            "mask may be far from the minimiser — raise pd_max_iter (or pd_tol)",
            RuntimeWarning, stacklevel=3)
