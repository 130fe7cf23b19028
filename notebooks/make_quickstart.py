# Generates notebooks/quickstart.ipynb (without outputs): python notebooks/make_quickstart.py
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = []
md = lambda s: cells.append(new_markdown_cell(s.strip("\n")))
def code(s, tags=None):
    c = new_code_cell(s.strip("\n"))
    if tags:
        c.metadata["tags"] = tags
    cells.append(c)

md(r"""
# Self2Seg quickstart

Self2Seg (Gruber et al., [arXiv 2309.10511](https://arxiv.org/abs/2309.10511)) segments **and**
denoises a single noisy image without any training data: two "expert" denoisers are fitted to
the current foreground and background only (by default a small CNN trained self-supervised,
Noise2Fast-style, for the foreground and the region mean for the background; both can be CNNs),
and the mask is moved to wherever each expert denoises better, under a total-variation penalty
$\lambda\,TV(u)$.

This notebook

1. loads a crop of the bundled DSB2018 nuclei image and adds Gaussian noise,
2. runs `s2s.segment` (the high-level API),
3. shows the stages: the two experts' squared-error maps, the relaxed mask $u$, the binary mask
   and the denoised composite,
4. sweeps $\lambda$ with `jax.vmap` over the compiled scheme (**low-level API**),
5. times the compiled call (first call = trace + compile + run, later calls = run only).

All sizes are set in the next cell (the test-suite executes this notebook with tiny values).
""")

code(r"""
# Parameters
SIZE = 128            # crop of the 512x512 sample (centre)
NOISE = 30.0          # Gaussian noise std on the 0..255 scale
STEPS = 200           # max Adam steps per expert training (one W-step)
NET_WIDTH = 32        # CNN expert: channels
NET_DEPTH = 4         # CNN expert: 3x3 conv layers
MAX_OUTER = 5         # max outer iterations (W-step + u-step)
PD_MAX_ITER = 3000    # max primal-dual iterations per u-step
INIT_DENOISE = True   # Otsu on the Noise2Fast-denoised image (paper protocol) or on the noisy one
LAMS = [0.01, 0.03, 0.1]   # lambda values of the sweep (section 4)
SWEEP_STEPS = 50      # the sweep's Adam steps per W-step (batched CNN training is slow on CPU)
SWEEP_MAX_OUTER = 3   # the sweep's max outer iterations
LEARN_STEPS = 30      # Adam steps when learning lambda and mu (section 6)
SEED = 0
""", tags=["parameters"])

code(r"""
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import self2seg_jax as s2s
from self2seg_jax import alternating

print("self2seg_jax", s2s.__version__, "| jax", jax.__version__, "| device:", jax.devices()[0])
""")

md("""
## 1. Data

A centre crop of the DSB2018 nuclei image (clean, 0..255) with its ground-truth mask, plus
Gaussian noise.
""")

code(r"""
y0 = x0 = (512 - SIZE) // 2
clean, gt = s2s.data.load_sample(crop=(y0, x0, y0 + SIZE, x0 + SIZE))
noisy = s2s.data.add_gaussian_noise(SEED, clean, NOISE)
print(f"{SIZE}x{SIZE} crop, foreground {gt.mean():.1%}, "
      f"PSNR of the noisy image {s2s.metrics.psnr(noisy, clean, data_range=255):.2f} dB")

fig, axes = plt.subplots(1, 3, figsize=(12, 4))
for ax, (img, title) in zip(axes, [(clean, "clean"), (noisy, f"noisy (std {NOISE:g})"),
                                   (gt, "ground truth")], strict=True):
    ax.imshow(img, cmap="gray")
    ax.set_title(title)
    ax.set_axis_off()
plt.show()
""")

md("""
## 2. Segment and denoise

`s2s.segment` validates and min-max normalises the image, builds the initial mask (Otsu) and
calls the compiled scheme. The first call traces and compiles it; we time it here and again in
section 5.
""")

code(r"""
config = s2s.Self2SegConfig(
    net_width=NET_WIDTH,
    net_depth=NET_DEPTH,
    train_max_steps=STEPS,
    train_min_steps=min(100, STEPS),
    max_outer=MAX_OUTER,
    pd_max_iter=PD_MAX_ITER,
    init_denoise=INIT_DENOISE,
)

t0 = time.perf_counter()
res = s2s.segment(jax.random.key(SEED), noisy, config=config)
t_first = time.perf_counter() - t0

dice = s2s.metrics.dice(res.mask, gt)
psnr_noisy = s2s.metrics.psnr(noisy, clean, data_range=255)
psnr_den = s2s.metrics.psnr(res.denoised, clean, data_range=255)
print(f"{res.num_outer} outer iterations ({res.status}) in {t_first:.2f} s (incl. compilation)")
print(f"Dice {dice:.4f}  IoU {s2s.metrics.iou(res.mask, gt):.4f}")
print(f"PSNR noisy {psnr_noisy:.2f} dB -> denoised {psnr_den:.2f} dB")
print("energy per outer iteration:", np.round(res.energies, 3))
""")

md(r"""
### Watching a run, and λ from the image

`progress=True` shows a progress bar for the run (here as HTML; on a terminal a live line on
stderr): outer iterations and — with `progress_training=True` — the experts' Adam steps, fed
from inside the compiled loop, with the time elapsed and an upper estimate of the time left.
(Programs that report training steps are not stored in JAX's persistent compilation cache.)

`lam="auto"` chooses λ for this image from the noise of its own data terms after the first
W-step (no labels; `self2seg_jax.lam_auto`); `res.lam` records the value used.
""")

code(r"""
live = config.replace(progress=True, progress_training=True, lam="auto")
res_live = s2s.segment(jax.random.key(SEED), noisy, config=live)
print(f"lam auto -> {res_live.lam:g}: Dice {s2s.metrics.dice(res_live.mask, gt):.4f} "
      f"(fixed lam {res.lam:g}: {dice:.4f})")
""")

md(r"""
## 3. The stages

On the normalised image $f$: the squared errors of the two experts, $(f - D_F(f))^2$ and
$(f - D_B(f))^2$, are the region fidelities of the energy. Each expert was fitted only to its
own region, so its error is small there: the mask step puts a pixel into the foreground where the
foreground expert's error is lower, by more than $\lambda$ times the boundary it adds. $u$ is the
relaxed minimiser in $[0, 1]$, the mask is $u \ge 0.5$, and the denoised image is the composite
$u\,D_F(f) + (1-u)\,D_B(f)$.
""")

code(r"""
lo, hi = float(noisy.min()), float(noisy.max())
nrm = lambda a: (np.asarray(a, np.float64) - lo) / (hi - lo)
f = nrm(noisy)
err_fg = (f - nrm(res.denoised_fg)) ** 2
err_bg = (f - nrm(res.denoised_bg)) ** 2
vmax = float(np.percentile(np.concatenate([err_fg.ravel(), err_bg.ravel()]), 99))

panels = [
    (f, "noisy f (normalised)", dict(cmap="gray")),
    (err_fg, "(f − D_F)²: foreground expert", dict(cmap="magma", vmin=0, vmax=vmax)),
    (err_bg, "(f − D_B)²: background expert", dict(cmap="magma", vmin=0, vmax=vmax)),
    (res.u, "u (relaxed mask)", dict(cmap="viridis", vmin=0, vmax=1)),
    (res.mask, f"mask u ≥ 0.5 (Dice {dice:.3f})", dict(cmap="gray")),
    (res.denoised, f"composite u·D_F + (1−u)·D_B ({psnr_den:.1f} dB)", dict(cmap="gray")),
]
fig, axes = plt.subplots(2, 3, figsize=(13, 8.5))
for ax, (img, title, kw) in zip(axes.ravel(), panels, strict=True):
    im = ax.imshow(img, **kw)
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
axes[1, 1].contour(gt.astype(float), levels=[0.5], colors="cyan", linewidths=0.7)
plt.tight_layout()
plt.show()
""")

md(r"""
## 4. A λ sweep with `jax.vmap` — low-level API

> **Low-level API.** This section calls the compiled scheme `self2seg_jax.alternating.run`
> directly, on the normalised image, with explicit initial region weights `w0` (shape `(C, h, w)`,
> class 0 = background) and initial labels. It is what `s2s.segment` does inside, but it is not
> the stable interface: prefer `s2s.segment` unless you need to batch
> (`alternating.run_sweep` is the ready-made λ sweep, with a shared first W-step).

The configuration splits into a hashable **static** part (`config.spec()`: shapes, expert
kinds, iteration caps — a change recompiles) and a **traced** part (`config.hyper()`: a
`Hyper` of float32 scalars — λ, µ, learning rate, tolerances). Because the `Hyper` is traced,
we can stack several λ values into a batched `Hyper` and `vmap` the whole scheme over it
(in_axes only over the hyper-parameters; image, key and initial mask are shared): all λ values
run in one compiled call.

On a GPU the batch runs in parallel. On a CPU, XLA's batched convolutions make each run of the
batch several times slower than a single run, so the sweep uses its own, shorter schedule
(`SWEEP_STEPS`, `SWEEP_MAX_OUTER`); set them to `STEPS`, `MAX_OUTER` on a GPU.
""")

code(r"""
from self2seg_jax.api import normalise, validate_image

f32, _, _ = normalise(validate_image(noisy)[0], config.normalise)          # (h, w) float32 in [0, 1]
m0 = jnp.asarray(res.init_mask, jnp.float32)              # the initial mask used above
w0 = jnp.stack([1.0 - m0, m0])                            # (C, h, w) region weights, bg first
labels0 = m0.astype(jnp.int32)                            # (h, w) initial labels
sweep_config = config.replace(train_max_steps=SWEEP_STEPS,
                              train_min_steps=min(config.train_min_steps, SWEEP_STEPS),
                              max_outer=SWEEP_MAX_OUTER)
spec = sweep_config.spec()                                # static: recompiles when changed
hyper = sweep_config.hyper()                              # traced: Hyper of float32 scalars
lams = jnp.asarray(LAMS, jnp.float32)
batched = jax.tree.map(lambda x: jnp.broadcast_to(x, lams.shape), hyper)._replace(lam=lams)
print(batched)

run_one = lambda h: alternating.run(jax.random.key(SEED), jnp.asarray(f32), w0, labels0, h,
                                    spec=spec)
sweep = jax.jit(jax.vmap(run_one, in_axes=(0,)))           # vmap over the Hyper only

t0 = time.perf_counter()
states = jax.block_until_ready(sweep(batched))
print(f"{len(LAMS)} lambda values in one call: {time.perf_counter() - t0:.2f} s "
      "(compile + run; a second call with other lambda values would not recompile)")

masks = np.asarray(states.labels) > 0
composite = lambda s: alternating.composite(alternating.probabilities(s, spec), s.den)
denoised = np.asarray(jax.vmap(composite)(states)) * (hi - lo) + lo
sweep_dice = [s2s.metrics.dice(m, gt) for m in masks]
status = np.asarray(states.status)
for lam, d, it, s in zip(LAMS, sweep_dice, np.asarray(states.it), status, strict=True):
    print(f"lam {lam:<7g} Dice {d:.4f}  outer iterations {int(it)}  "
          f"({alternating.STATUS_NAMES[int(s)]})")

fig, axes = plt.subplots(2, len(LAMS), figsize=(3 * len(LAMS), 6.3), squeeze=False)
for j, lam in enumerate(LAMS):
    axes[0, j].imshow(masks[j], cmap="gray")
    axes[0, j].set_title(f"λ = {lam:g}, Dice {sweep_dice[j]:.3f}", fontsize=10)
    axes[1, j].imshow(denoised[j], cmap="gray")
    axes[1, j].set_title(f"PSNR {s2s.metrics.psnr(denoised[j], clean, data_range=255):.1f} dB",
                         fontsize=10)
for ax in axes.ravel():
    ax.set_axis_off()
plt.tight_layout()
plt.show()
""")

md("""
## 5. Timing the compiled call

`segment` compiles the scheme once per static configuration and image shape. A new image of
the same shape, a new key or a new λ reuses the compiled program
(`alternating.run._cache_size()` counts the programs compiled for the scheme).
""")

code(r"""
compiled = alternating.run._cache_size()
assert compiled >= 1                                       # the first call compiled the scheme
t0 = time.perf_counter()
res2 = s2s.segment(jax.random.key(SEED + 1), noisy, config=config.replace(lam=2 * config.lam))
t_second = time.perf_counter() - t0
assert alternating.run._cache_size() == compiled, "unexpected recompilation"

print(f"first call  (trace + compile + run): {t_first:8.2f} s")
print(f"second call (new key and lam, run only): {t_second:8.2f} s  "
      f"-> {t_first / max(t_second, 1e-9):.0f}x faster, no recompilation")
print(f"second run: {res2.num_outer} outer iterations, Dice {s2s.metrics.dice(res2.mask, gt):.4f}")
""")

md("""
The same from the command line:

```bash
self2seg demo -o demo_out                      # this crop, with noise, as files + report
self2seg segment my_image.tif -o out/ --lam 0.02 --gt my_mask.tif
```
""")

md(r"""
## 6. Learning λ and µ by gradient descent

The mask step is differentiable (`s2s.relaxed_mask`: implicit differentiation of the
primal–dual solver's optimality conditions, TV Huber-smoothed with ε = 0.01). Keeping the experts
trained above fixed, we fit $\log\lambda$ and $\log\mu$ with Adam to a soft-Dice loss against
the ground truth of the **left half** of the crop and evaluate the thresholded mask on the
**right half**. Without µ the relaxed minimiser is binary almost everywhere and the gradient only
sees edge pixels; with µ > 0 (reference mask = the initial mask here) it is informative.
`benchmarks/learn_lambda.py` runs the 2-patch / 14-patch protocol on the whole sample.
""")

code(r"""
import optax
from self2seg_jax import api

f, lo, hi = api.normalise(api.validate_image(noisy)[0], config.normalise)
d_fg = jnp.asarray((f - (res.denoised_fg - lo) / (hi - lo)) ** 2)
d_bg = jnp.asarray((f - (res.denoised_bg - lo) / (hi - lo)) ** 2)
u_ref = jnp.asarray(res.init_mask, jnp.float32)
gt_f = jnp.asarray(gt, jnp.float32)
half = SIZE // 2


def soft_dice_loss(u, g):
    return 1.0 - 2.0 * jnp.sum(u * g) / (jnp.sum(u) + jnp.sum(g) + 1e-6)


def relaxed(theta):
    lam, mu = jnp.exp(theta[0]), jnp.exp(theta[1])
    return s2s.relaxed_mask(d_fg, d_bg, lam, mu=mu, u_ref=u_ref, smoothing=1e-2, tol=1e-4,
                            max_iter=3000)


loss_and_grad = jax.jit(jax.value_and_grad(
    lambda theta: soft_dice_loss(relaxed(theta)[:, :half], gt_f[:, :half])))

theta = jnp.log(jnp.array([config.lam, config.mu], jnp.float32))
opt = optax.adam(0.1)
opt_state = opt.init(theta)
losses = []
for _ in range(LEARN_STEPS):
    val, g = loss_and_grad(theta)
    updates, opt_state = opt.update(g, opt_state)
    theta = optax.apply_updates(theta, updates)
    losses.append(float(val))

lam_l, mu_l = (float(v) for v in jnp.exp(theta))
right = lambda u: s2s.metrics.dice(np.asarray(u)[:, half:] >= 0.5, gt[:, half:])  # noqa: E731
theta0 = jnp.log(jnp.array([config.lam, config.mu], jnp.float32))
print(f"soft-Dice loss (left half): {losses[0]:.4f} -> {losses[-1]:.4f}")
print(f"learned lam {lam_l:.4g}, mu {mu_l:.4g}  (defaults {config.lam}, {config.mu})")
print(f"Dice on the right half: default {right(relaxed(theta0)):.4f}, learned {right(relaxed(theta)):.4f}")
""")

for i, c in enumerate(cells):
    c["id"] = f"cell-{i:02d}"
nb = new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
nb.metadata["language_info"] = {"name": "python"}
nbformat.validate(nb)
nbformat.write(nb, str(__import__("pathlib").Path(__file__).with_name("quickstart.ipynb")))
print("ok")
