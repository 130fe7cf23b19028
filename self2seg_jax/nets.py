"""The expert CNN (Flax). Imported by :mod:`self2seg_jax.experts` only when a network is
built, so that processes that only run stored programs do not import Flax."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from self2seg_jax import ops


class _Conv(nn.Module):
    features: int
    impl: str
    ndim: int

    @nn.compact
    def __call__(self, x, padding="SAME"):
        k = (3,) * self.ndim
        w = self.param("kernel", nn.initializers.lecun_normal(), k + (x.shape[-1], self.features))
        b = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return ops.conv_bias(x, w, b, impl=self.impl, padding=padding)


class N2FNet(nn.Module):
    """Expert CNN: ``depth`` x [3x3 conv, ReLU] -> 1x1 conv -> sigmoid.

    Zero ("SAME") padding (the authors reflect-pad, which doubles XLA:CPU's forward cost).
    Maps ``(*b, *s)`` to ``(*b, *s)`` (``channels = 0``) or ``(*b, L, *s)`` to ``(*b, L, *s)``.
    """

    width: int = 32
    depth: int = 4
    impl: str = "lax"
    ndim: int = 2
    channels: int = 0

    @nn.compact
    def __call__(self, x, valid=None, trim=False):
        """``valid`` (optional, ``(*b, *s)`` 0/1): where the pixels lie inside the image; hidden
        activations are zeroed outside, which reproduces the per-layer zero padding at the
        image border inside tiles and crops cut from a zero-padded image.

        ``trim``: ``VALID`` convolutions — the output lacks ``depth`` pixels on every side of
        each spatial axis (``(*b, *(s - 2 depth))``) and equals the ``SAME`` output there; only
        the pixels whose receptive field lies inside ``x`` are computed (crops and tiles read
        with a halo of ``depth`` pixels need no more)."""
        nd, nc = self.ndim, self.channels
        if nc:
            lead, core = x.shape[: -(nd + 1)], x.shape[-(nd + 1):]
            h = jnp.moveaxis(x.reshape((-1,) + core), 1, -1)
        else:
            lead, core = x.shape[:-nd], x.shape[-nd:]
            h = x.reshape((-1,) + core + (1,))
        v = None if valid is None else valid.reshape((-1,) + core[-nd:] + (1,)).astype(h.dtype)
        one = (slice(None),) + (slice(1, -1),) * nd
        for _ in range(self.depth):
            h = nn.relu(_Conv(self.width, self.impl, nd)(h, "VALID" if trim else "SAME"))
            v = v[one] if trim and v is not None else v
            h = h if v is None else h * v
        h = nn.sigmoid(nn.Dense(max(nc, 1))(h))
        out = h.shape[1:1 + nd]
        if nc:
            return jnp.moveaxis(h, -1, 1).reshape(lead + core[:1] + out)
        return h[..., 0].reshape(lead + out)
