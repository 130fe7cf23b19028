"""How this package's programs are compiled for the machine they run on.

:func:`compiler_options` is the one decision about XLA compiler options; :func:`jit` is
``jax.jit`` with those options, decided when the function is first called (so importing the
package initialises no backend). Every compiled entry point of the package goes through it.

The one option today: on a CPU **without AVX-512**, XLA:CPU's YNNPACK fusions (the kernels it
hands convolutions to) are turned off (``xla_cpu_experimental_ynn_fusion_type=""``). On the
2-core AMD EPYC (AVX2) CI-class machine the default run was 2.1x faster warm on a 128² patch
and 1.18x on the bundled 3-D stack without them, but 0.88x on a 512² image
(``python benchmarks/bench_cpu_ynn.py --whole`` -> ``benchmarks/results/cpu_ynn/whole.json``;
per component the differences are small and depend on what else ran in the process). CPUs
with AVX-512 keep XLA's default: not measured here.

``SELF2SEG_CPU_YNN`` overrides the choice: ``off`` (no YNN fusions on any CPU), ``on`` (XLA's
default everywhere) or ``auto`` (the rule above; the default). A jaxlib that does not know the
option compiles with XLA's defaults. Other backends (GPU, TPU) are never given options.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
ENV = "SELF2SEG_CPU_YNN"
_CHOICES = ("auto", "on", "off")


@functools.cache
def cpu_has_avx512() -> bool | None:
    """Whether the CPU reports AVX-512 (``avx512f`` in ``/proc/cpuinfo``); None where that file
    cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        return None
    return None


@functools.cache
def ynn_option_supported() -> bool:
    """Whether this jaxlib accepts :data:`YNN_OPTION` (a tiny program is compiled with it)."""
    import jax
    import jax.numpy as jnp

    try:
        jax.jit(lambda x: x + 1, compiler_options={YNN_OPTION: ""}).lower(
            jnp.float32(0)).compile()
    except Exception:  # an unknown option: XLA's defaults then
        return False
    return True


def ynn_choice() -> str:
    """``SELF2SEG_CPU_YNN`` (``auto`` when unset); an unknown value is an error naming it."""
    v = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if v not in _CHOICES:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected one of {', '.join(_CHOICES)}")
    return v


@functools.cache
def _options(backend: str, choice: str) -> tuple:
    if backend != "cpu" or choice == "on":
        return ()
    if choice == "auto" and cpu_has_avx512() is not False:
        return ()
    return ((YNN_OPTION, ""),) if ynn_option_supported() else ()


def compiler_options(backend: str | None = None) -> dict:
    """The XLA compiler options of this package's programs on ``backend`` (default: JAX's
    default backend); ``{}`` = XLA's defaults. See the module docstring."""
    if backend is None:
        import jax

        backend = jax.default_backend()
    return dict(_options(backend, ynn_choice()))


def _top_level(args, kwargs) -> bool:
    """Whether a call happens outside any JAX trace (so that it compiles a program of its own)."""
    try:
        from jax._src import core

        return bool(core.trace_ctx.is_top_level())
    except Exception:  # no such internal: judge by the arguments
        import jax

        return not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs)))


class _Jit:
    """``jax.jit(fun, **kw)`` built at the first use with :func:`compiler_options` (one build per
    option set: changing ``SELF2SEG_CPU_YNN`` between calls takes effect)."""

    def __init__(self, fun: Callable, kw: dict):
        self._fun, self._kw, self._built = fun, kw, {}
        functools.update_wrapper(self, fun)

    def _jitted(self, top: bool = True):
        import jax

        opts = compiler_options() if top else {}
        key = tuple(sorted(opts.items()))
        f = self._built.get(key)
        if f is None:
            f = self._built[key] = jax.jit(self._fun, compiler_options=opts or None, **self._kw)
        return f

    def __call__(self, *args, **kwargs):
        # Inside another trace (a jit, vmap or grad of the caller) the function is inlined into
        # the caller's program: JAX accepts compiler options only on the outermost jit.
        return self._jitted(_top_level(args, kwargs))(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # lower, trace, eval_shape, ...
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._jitted(), name)


def jit(fun: Callable | None = None, **kw):
    """``jax.jit`` with this package's :func:`compiler_options`; usable as ``@jit``,
    ``@jit(static_argnames=...)`` or ``jit(f, ...)``."""
    if fun is None:
        return lambda f: _Jit(f, kw)
    return _Jit(fun, kw)
