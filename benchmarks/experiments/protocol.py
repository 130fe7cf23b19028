r"""A committed evaluation protocol (``benchmarks/protocols/*.toml``) and its batched runs.

The protocol file fixes everything a run decides: data (patches, noise levels and seeds, the
tuning / evaluation split, the whole image), the lambda grid, the methods (named readings, each
a :class:`~self2seg_jax.config.Self2SegConfig` built from the library defaults and the file's
overrides) and the report's comparisons. :func:`run_cell` runs one *cell* — one method at one
noise level and noise seed, on all patches (or the whole image) and every lambda — in one
compiled call, and returns one row per image; :mod:`report_protocol` turns rows into tables.

Pairing: every method on (seed ``s``, patch ``p``) sees the same noisy image, the same key
``fold_in(fold_in(key(key_base), s), p)`` (split as :func:`self2seg_jax.segment` splits its key:
first half for the Noise2Fast start, second for the scheme) and, where it starts from it, the
same Noise2Fast start.

Batching (:func:`default_batch`): ``lax.map`` over images and lambdas, except Chan–Vese cells
on accelerators (``vmap``). A vmapped ``while_loop`` runs every member until the slowest has
stopped, and vmapped CNN experts batch their convolution kernels: slower on XLA:CPU and on an
H200 alike.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tomllib
from jax import lax

from experiments import dsb2018
from self2seg_jax import alternating, api, baselines, data, experts, metrics
from self2seg_jax.config import Self2SegConfig
from self2seg_jax.initialisation import otsu_threshold

KINDS = ("chan_vese", "self2seg")
DATA = ("noisy", "n2f")
STARTS = ("otsu", "n2f_otsu")
WHOLE = -1
"""Patch index of the whole image in rows (``"scale": "whole"``)."""
WHOLE_NOISE_INDEX = 16
"""Noise seed index of the whole image in :func:`noisy_image`'s formula (patches use 0..15)."""
_CONFIG_KEYS = ("mu", "bg_expert", "fg_expert", "data_term", "net_width", "learning_rate",
                "train_max_steps", "train_min_steps", "train_patience")  # a method's overrides
_METHOD_KEYS = {"label", "kind", "data", "start", "data_filter", *_CONFIG_KEYS}


class Protocol(NamedTuple):
    """A parsed, checked protocol file (see ``benchmarks/protocols/dsb2018_v2.toml``)."""

    name: str
    version: int
    path: str
    raw: dict

    @property
    def data(self) -> dict:
        return self.raw["data"]

    @property
    def grid(self) -> tuple[float, ...]:
        return tuple(float(x) for x in self.raw["lambda"]["grid"])

    def grid_of(self, method: str) -> tuple[float, ...]:
        """The lambda grid of ``method``: ``grid_self2seg`` (when given) for Self2Seg rows,
        ``grid`` for the rest."""
        lam = self.raw["lambda"]
        if self.methods[method]["kind"] == "self2seg" and "grid_self2seg" in lam:
            return tuple(float(x) for x in lam["grid_self2seg"])
        return self.grid

    @property
    def methods(self) -> dict:
        return self.raw["methods"]

    @property
    def report(self) -> dict:
        return self.raw["report"]


def load(path) -> Protocol:
    """Read and check a protocol file; raises ``ValueError`` naming the first problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"protocol file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"protocol file {path} is not valid TOML: {e}") from None
    for section in ("data", "lambda", "base", "methods", "report"):
        if section not in raw:
            raise ValueError(f"protocol {path}: missing section [{section}]")
    d = raw["data"]
    tune, ev = set(d["tuning_patches"]), set(d["evaluation_patches"])
    if tune & ev:
        raise ValueError(f"protocol {path}: patches {sorted(tune & ev)} in both splits")
    for name in ("grid", "grid_self2seg"):
        grid = raw["lambda"].get(name, raw["lambda"]["grid"])
        if list(grid) != sorted(grid) or len(set(grid)) != len(grid) or min(grid) <= 0:
            raise ValueError(f"protocol {path}: lambda {name} must be positive and increasing")
        if raw["lambda"]["fixed"] not in grid:
            raise ValueError(f"protocol {path}: the fixed lambda must be in the {name}")
    Self2SegConfig(**raw["base"])  # checks the overrides
    for name, m in raw["methods"].items():
        extra = set(m) - _METHOD_KEYS
        if extra:
            raise ValueError(f"protocol {path}: method {name}: unknown keys {sorted(extra)}")
        if m.get("kind") not in KINDS or m.get("data") not in DATA or m.get("start") not in STARTS:
            raise ValueError(f"protocol {path}: method {name}: kind/data/start must be one of "
                             f"{KINDS}/{DATA}/{STARTS}")
        for level in d["levels"]:
            method_config(Protocol(raw.get("name", path.stem), 0, str(path), raw), name, level)
    for name in raw["report"]["self2seg"] + raw["report"]["baselines"]:
        if name not in raw["methods"]:
            raise ValueError(f"protocol {path}: report names unknown method {name!r}")
    return Protocol(raw.get("name", path.stem), int(raw.get("version", 0)), str(path), raw)


def method_config(proto: Protocol, method: str, level: float) -> Self2SegConfig:
    """The :class:`Self2SegConfig` of ``method`` at noise ``level`` (``lam`` is swept)."""
    m = proto.methods[method]
    base = Self2SegConfig(**proto.raw["base"])
    if m["kind"] == "chan_vese":
        cfg = baselines.chan_vese_config(proto.raw["lambda"]["fixed"], max_outer=30,
                                         mask_tol=1e-3, config=base)
    else:
        cfg = base
    over = {k: m[k] for k in _CONFIG_KEYS if k in m}
    filt = m.get("data_filter", "none")
    if filt not in ("none", "paper"):
        raise ValueError(f"method {method}: data_filter must be 'none' or 'paper', got {filt!r}")
    over["data_filter"] = 3 if (filt == "paper" and level > 10) else 1
    return cfg.replace(**over)


def image_key(proto: Protocol, seed: int, index: int) -> jax.Array:
    """The key of (noise seed, image index); the whole image has index :data:`WHOLE`."""
    k = jax.random.fold_in(jax.random.key(int(proto.data["key_base"])), int(seed))
    return jax.random.fold_in(k, int(index) % 2**31)


def noisy_image(level: float, seed: int, clean: np.ndarray, index: int) -> np.ndarray:
    """Gaussian noise of std ``level`` (0..255 scale) with seed ``seed*10^6 + 1000*level +
    index`` — :func:`experiments.dsb2018.noisy_patches`' formula, for the whole image
    (index :data:`WHOLE_NOISE_INDEX`)."""
    return data.add_gaussian_noise(int(seed * 10**6 + 1000 * level + index), clean, float(level))


class Images(NamedTuple):
    """The images of one (level, seed, scale): ``index`` ``(n,)`` patch indices (or
    ``[WHOLE]``), ``clean``/``noisy`` float32 ``(n, h, w)`` on 0..255, ``gt`` bool."""

    index: list
    clean: np.ndarray
    noisy: np.ndarray
    gt: np.ndarray


def images(proto: Protocol, level: float, seed: int, scale: str, *, size: int | None = None,
           indices=None) -> Images:
    """The noisy images of a cell: ``scale="patch"`` (the protocol's patches, both splits, or
    ``indices``) or ``"whole"`` (the bundled 512x512 sample). ``size`` overrides the patch size
    (small smoke runs)."""
    if scale == "whole":
        clean, gt = data.load_sample()
        clean = np.asarray(clean, np.float32)
        return Images([WHOLE], clean[None], noisy_image(level, seed, clean, WHOLE_NOISE_INDEX)[None],
                      np.asarray(gt, bool)[None])
    if scale != "patch":
        raise ValueError(f"scale must be 'patch' or 'whole', got {scale!r}")
    idx = sorted(proto.data["tuning_patches"] + proto.data["evaluation_patches"]) \
        if indices is None else list(indices)
    ps = dsb2018.noisy_patches(level, convention=proto.data["convention"], seed=seed,
                               size=size or proto.data["patch_size"], indices=idx)
    return Images(idx, np.stack([p.clean for p in ps]), np.stack([p.noisy for p in ps]),
                  np.stack([np.asarray(p.gt, bool) for p in ps]))


def default_batch(kind: str = "self2seg") -> str:
    """``"vmap"`` for Chan–Vese cells on accelerators, else ``"map"``: runs with CNN experts
    (and the Noise2Fast starts) were slower vmapped than mapped on an H200 too (16 patches:
    16.8 s vs 4.5 s, ``benchmarks/results/batch/batch_modes_gpu_16.json``)."""
    return "vmap" if kind == "chan_vese" and jax.default_backend() != "cpu" else "map"


class Starts(NamedTuple):
    """Normalised data and starts of a cell's images (float32 / bool ``(n, h, w)``)."""

    f: np.ndarray         # normalised noisy images
    den: np.ndarray       # normalised Noise2Fast outputs (same normalisation as f); None when
    den_raw: np.ndarray   # made with denoise=False; on the input's scale (for PSNR)
    lo: np.ndarray        # (n,) normalisation of each image: f = (noisy - lo) / (hi - lo)
    hi: np.ndarray
    otsu: np.ndarray      # Otsu of f
    n2f_otsu: np.ndarray  # Otsu of the min-max rescaled Noise2Fast output (shared start) or None
    seconds: float


@functools.partial(jax.jit, static_argnames=("train", "batch"))
def _denoise_all(keys, f, lr, train, batch):
    one = lambda a: experts.denoise(a[0], a[1], lr, train)  # noqa: E731
    return jax.vmap(one)((keys, f)) if batch == "vmap" else lax.map(one, (keys, f))


def needs_denoiser(proto: Protocol, method: str) -> bool:
    """Whether ``method`` uses the shared Noise2Fast output (as its data or for its start)."""
    m = proto.methods[method]
    return m["data"] == "n2f" or m["start"] == "n2f_otsu"


def starts(proto: Protocol, ims: Images, seed: int, *, batch: str | None = None,
           denoise: bool = True) -> Starts:
    """Normalise every image (the base config's normalisation) and run the shared Noise2Fast
    start with the first half of each image's key, batched. ``denoise=False`` skips the
    Noise2Fast run (``den``, ``den_raw`` and ``n2f_otsu`` are ``None``): for cells whose
    methods all start from Otsu of the noisy image (:func:`needs_denoiser`); nothing else
    changes, the keys stay paired."""
    base = Self2SegConfig(**proto.raw["base"])
    t = time.perf_counter()
    norm = [api.normalise(api.validate_image(a)[0], base.normalise) for a in ims.noisy]
    f = np.stack([n[0] for n in norm]).astype(np.float32)
    lo = np.array([n[1] for n in norm], np.float32)[:, None, None]
    hi = np.array([n[2] for n in norm], np.float32)[:, None, None]
    otsu = np.stack([x > otsu_threshold(x) for x in f])
    if not denoise:
        return Starts(f, None, None, lo.ravel(), hi.ravel(), otsu, None, time.perf_counter() - t)
    keys = jnp.stack([jax.random.split(image_key(proto, seed, i))[0] for i in ims.index])
    den = np.asarray(_denoise_all(keys, jnp.asarray(f), jnp.float32(base.learning_rate),
                                  base.spec().train, batch or default_batch()))
    g = [(d - d.min()) / max(float(d.max() - d.min()), 1e-12) for d in den]
    n2f_otsu = np.stack([x > otsu_threshold(x) for x in g])
    return Starts(f, den.astype(np.float32), (den * (hi - lo) + lo).astype(np.float32),
                  lo.ravel(), hi.ravel(), otsu, n2f_otsu, time.perf_counter() - t)


def method_inputs(proto: Protocol, method: str, st: Starts) -> tuple[np.ndarray, np.ndarray]:
    """``(data, start mask)`` ``(n, h, w)`` a method sees in a cell: the normalised noisy image
    or the Noise2Fast output (``data = "n2f"``), and the Otsu start of the one or the other."""
    m = proto.methods[method]
    if needs_denoiser(proto, method) and st.den is None:
        raise ValueError(f"method {method!r} needs the Noise2Fast start; these starts were "
                         "made with denoise=False")
    f = st.den if m["data"] == "n2f" else st.f
    m0 = st.n2f_otsu if needs_denoiser(proto, method) else st.otsu
    return f, m0


def run_key(proto: Protocol, seed: int, index: int) -> jax.Array:
    """The key of the scheme's run on image ``index`` (the second half of its
    :func:`image_key`; the first half is the Noise2Fast start's)."""
    return jax.random.split(image_key(proto, seed, index))[1]


@functools.partial(jax.jit, static_argnames=("spec", "batch"))
def _sweep(keys, f, m0, hypers, spec, batch):
    """Every (image, lambda) pair: ``keys`` ``(n,)``, ``f``/``m0`` ``(n, h, w)``, ``hypers``
    with ``(L,)`` leaves; the first W-step of each image is shared by its lambdas."""

    def one(args):
        k, a, m = args
        s = alternating.run_sweep(k, a, jnp.stack([1.0 - m, m]), m.astype(jnp.int32), hypers,
                                  spec, batch=batch)
        den = jax.vmap(lambda t: alternating.composite(alternating.probabilities(t, spec),
                                                       t.den))(s)
        return s.labels > 0, den, s.it, s.status, s.train_steps.sum(axis=(1, 2))

    return jax.vmap(one)((keys, f, m0)) if batch == "vmap" else lax.map(one, (keys, f, m0))


def run_cell(proto: Protocol, method: str, level: float, seed: int, ims: Images, st: Starts, *,
             batch: str | None = None, grid=None) -> list[dict]:
    """One method on every image of a cell and every lambda of the grid, one compiled call.

    Returns one row per image: ``method, level, seed, patch`` (:data:`WHOLE` for the whole
    image), ``scale``, ``split`` (``tuning``/``evaluation``/``whole``), ``lams``, ``dice`` and
    (denoising methods) ``psnr`` per lambda, ``init_dice``, ``num_outer``, ``status``,
    ``train_steps`` per lambda, ``seconds`` (the call's wall time divided by the images) and
    ``start_seconds`` (the shared start's share).
    """
    m = proto.methods[method]
    cfg = method_config(proto, method, level)
    grid = proto.grid_of(method) if grid is None else tuple(grid)
    f, m0 = method_inputs(proto, method, st)
    keys = jnp.stack([run_key(proto, seed, i) for i in ims.index])
    t = time.perf_counter()
    out = _sweep(keys, jnp.asarray(f), jnp.asarray(m0, jnp.float32), dsb2018.stacked_hyper(cfg, grid),
                 cfg.spec(), batch or default_batch(m["kind"]))
    masks, den, it, status, steps = jax.device_get(out)
    dt = (time.perf_counter() - t) / len(ims.index)
    d = proto.data
    rows = []
    for j, i in enumerate(ims.index):
        split = "whole" if i == WHOLE else ("tuning" if i in d["tuning_patches"] else
                                            "evaluation" if i in d["evaluation_patches"] else "other")
        row = {
            "protocol": proto.name, "method": method, "level": float(level), "seed": int(seed),
            "patch": int(i), "scale": "whole" if i == WHOLE else "patch", "split": split,
            "size": int(f.shape[-1]), "lams": [float(x) for x in grid],
            "dice": [round(metrics.dice(mk, ims.gt[j]), 5) for mk in masks[j]],
            "init_dice": round(metrics.dice(m0[j], ims.gt[j]), 5),
            "num_outer": np.asarray(it[j]).tolist(), "status": np.asarray(status[j]).tolist(),
            "train_steps": np.asarray(steps[j]).tolist(), "seconds": round(dt, 4),
            "start_seconds": round(st.seconds / len(ims.index), 4) if m["start"] == "n2f_otsu"
            or m["data"] == "n2f" else 0.0,
        }
        if m["data"] == "n2f":
            row["psnr"] = [round(metrics.psnr(st.den_raw[j], ims.clean[j], data_range=255.0), 3)
                           ] * len(grid)
        elif m["kind"] == "self2seg":
            # composite on the normalised scale (the base config's), back to the input's scale
            nlo, nhi = float(st.lo[j]), float(st.hi[j])
            row["psnr"] = [round(metrics.psnr(x * (nhi - nlo) + nlo, ims.clean[j],
                                              data_range=255.0), 3) for x in den[j]]
        rows.append(row)
    return rows
