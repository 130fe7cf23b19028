"""Exported programs kept on disk: a new process skips tracing and lowering, not only compiling.

JAX's persistent compilation cache (which the CLI turns on) stores compiled executables, but a
new process still *traces* the scheme's Python code and *lowers* it to StableHLO before it can
look the executable up: about 2 s for the default scheme on a 2-core CPU, most of a warm-cache
``self2seg segment`` call's overhead (``benchmarks/results/cli_cache.json``). With the export
cache on, the first call of a program for a given signature serialises it
(:func:`jax.export.export`) to ``<folder>/<key>.jaxexport``; later processes deserialise it and
call it, and its compilation is then found in the persistent compilation cache.
Routed through it: :func:`self2seg_jax.alternating.run` (``api.run_prepared``), the progress
path's ``init_state`` / ``outer_step``, and ``lam="auto"``'s ``first_w_step``, ``scale_of``,
``run_from_w_step`` and ``u_step``. Not: runs sharded over several devices.

The key covers everything that decides the program: the function, its static arguments (the
scheme's :class:`~self2seg_jax.alternating.Spec`), the shapes, dtypes and tree structure of its
array arguments, the JAX/jaxlib versions, the backend and device kind, the x64 and default
matmul-precision settings (they change what is lowered), and a digest
of this package's source files — so an upgrade or an edited checkout never meets a stale
program. A file that cannot be read, or a program that cannot be exported (host callbacks,
sharding constraints), falls back to the ordinary traced call; results are the same either way
(``tests/test_aot.py``).

Next to each exported program the *executable* compiled from it is kept as well
(``<key>-<options>.jaxexe``, :mod:`jax.experimental.serialize_executable`), written only by a
process that really compiled it (one that came from the compilation cache may serialise into
an executable that fails in another process: seen with jaxlib 0.10.2 on CPU). A new process
then loads it directly, which skips turning the exported program into MLIR and the
compilation-cache lookup: a warm-cache ``self2seg segment`` process on the 128^2 patch took
6.44 s instead of 7.45 s on the 2-core CPU (``benchmarks/results/startup_s19_exe/``). An
executable that will not load or run falls back to the exported program (and is deleted).

Off by default for the library (:func:`enable` turns it on for a folder); the CLI turns it on
next to the compilation cache (``--no-compile-cache`` turns both off; ``SELF2SEG_EXPORT_CACHE=0``
this one alone).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from self2seg_jax import backend

_state: dict[str, Any] = {"dir": None, "loaded": {}, "failed": set()}


def enable(path) -> None:
    """Keep exported programs in folder ``path`` (created if missing)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    _state["dir"] = p


def disable() -> None:
    """Stop using exported programs (the files stay)."""
    _state["dir"] = None


def folder() -> Path | None:
    """The folder in use, or ``None`` when the export cache is off."""
    return _state["dir"]


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 of this package's ``.py`` files (names and contents)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _aval(x) -> tuple:
    a = jax.typeof(x) if hasattr(jax, "typeof") else jax.api_util.shaped_abstractify(x)
    return a.shape, str(a.dtype), bool(getattr(a, "weak_type", False))


def program_key(name: str, static: dict, args: tuple) -> str:
    """The file name stem of the exported program of ``name`` for these arguments."""
    import jaxlib

    leaves, tree = jax.tree.flatten(args)
    dev = jax.devices()[0]
    parts = (name, repr(sorted(static.items())), str(tree), [_aval(x) for x in leaves],
             jax.__version__, jaxlib.__version__, jax.default_backend(),
             getattr(dev, "device_kind", ""), bool(jax.config.jax_enable_x64),
             str(jax.config.jax_default_matmul_precision), source_digest())
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def _load(path: Path):
    from jax import export

    blob = pickle.loads(path.read_bytes())
    return export.deserialize(bytearray(blob["exported"])), blob["out_tree"]


def _save(path: Path, exported, out_tree) -> None:
    _write_atomic(path, pickle.dumps({"exported": bytes(exported.serialize()),
                                      "out_tree": out_tree}))


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _exe_path(d: Path, key: str) -> Path:
    """Where the executable of program ``key`` compiled with this process's XLA options lives."""
    opts = repr(sorted(backend.compiler_options().items()))
    return d / f"{key}-{hashlib.sha256(opts.encode()).hexdigest()[:12]}.jaxexe"


def _load_exe(path: Path):
    from jax.experimental import serialize_executable

    blob = pickle.loads(path.read_bytes())
    compiled = serialize_executable.deserialize_and_load(blob["exe"], blob["in_tree"],
                                                         blob["exe_out_tree"])
    return compiled, blob["out_tree"]


def _save_exe(path: Path, compiled, out_tree) -> None:
    from jax.experimental import serialize_executable

    exe, in_tree, exe_out_tree = serialize_executable.serialize(compiled)
    _write_atomic(path, pickle.dumps({"exe": exe, "in_tree": in_tree,
                                      "exe_out_tree": exe_out_tree, "out_tree": out_tree}))


def exportable(spec) -> bool:
    """Whether the scheme of ``spec`` (:class:`~self2seg_jax.alternating.Spec`) can go through
    the export cache: not with training reports (host callbacks, which an exported program
    cannot carry) or a crop mesh (sharding across devices)."""
    return not spec.train.report and spec.train.crop_mesh is None


def call(fn: Callable, name: str, static: dict, *args):
    """``fn(*args, **static)``, through an exported program when the export cache is on and
    ``static["spec"]`` (if given) is :func:`exportable`.

    Args:
      fn: a function of arrays (pytrees) and the hashable keyword arguments ``static``.
      name: a stable name of ``fn`` (part of the key).
      static: keyword arguments fixed at export time (must have a stable ``repr``).
      args: pytrees of arrays, all on the default device.
    """
    d = _state["dir"]
    if d is None or ("spec" in static and not exportable(static["spec"])):
        return fn(*args, **static)
    key = program_key(name, static, args)
    if key in _state["failed"]:
        return fn(*args, **static)
    leaves = jax.tree.leaves(args)
    if key in _state["loaded"]:  # (compiled executable, output tree) of a program run here
        caller, out_tree = _state["loaded"][key]
        return jax.tree.unflatten(out_tree, caller(*leaves))
    exe_path = _exe_path(d, key)
    if exe_path.exists():
        try:
            compiled, out_tree = _load_exe(exe_path)
            out = compiled(*leaves)
        except Exception:  # stale or not loadable here: the exported program below
            exe_path.unlink(missing_ok=True)
        else:
            _state["loaded"][key] = (compiled, out_tree)
            return jax.tree.unflatten(out_tree, out)
    path = d / f"{key}.jaxexport"
    prog = None
    if path.exists():
        try:
            prog = _load(path)
        except Exception:  # unreadable or from an incompatible version: rebuild it
            prog = None
    if prog is None:
        try:
            prog = _export(fn, static, args)
            _save(path, *prog)
        except Exception:
            _state["failed"].add(key)
            return fn(*args, **static)
    exported, out_tree = prog
    from self2seg_jax.progress import compilations

    try:  # a program that cannot run here (e.g. read back from a mismatched file): traced call
        with compilations() as c:  # compiled once: later calls here skip lowering
            caller = backend.jit(exported.call).lower(*leaves).compile()
        out = caller(*leaves)
    except Exception:
        _state["failed"].add(key)
        return fn(*args, **static)
    _state["loaded"][key] = (caller, out_tree)
    if c["count"]:  # compiled here (an executable read from the compilation cache may not
        try:        # serialise into one that runs elsewhere)
            _save_exe(exe_path, caller, out_tree)
        except Exception:  # not serialisable on this backend: the exported program will do
            pass
    return jax.tree.unflatten(out_tree, out)


def _export(fn: Callable, static: dict, args: tuple):
    from jax import export

    tree = jax.tree.structure(args)
    out_tree = []

    def flat(*leaves):
        out = fn(*jax.tree.unflatten(tree, leaves), **static)
        o_leaves, o_tree = jax.tree.flatten(out)
        out_tree.append(o_tree)
        return o_leaves

    exported = export.export(jax.jit(flat))(*jax.tree.leaves(args))
    return exported, out_tree[-1]
