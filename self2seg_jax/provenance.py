"""Where a result came from: package versions, device, machine and (in a git checkout) the
commit and whether the tree was clean. Used by the CLI's reports and by every benchmark, so
that all of them record the same fields."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state(path=None) -> dict:
    """``{"commit": sha or None, "clean": bool or None}`` of the git tree holding ``path``;
    clean means no modified, staged or untracked (not ignored) file."""
    cwd = Path(path or Path(__file__).parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True,
                               text=True, timeout=10, check=True).stdout
        return {"commit": sha, "clean": not dirty.strip()}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "clean": None}


def versions() -> dict:
    """Versions of the package, JAX and Python, and the device JAX runs on."""
    import jax
    import jaxlib
    import ml_dtypes
    import numpy as np

    from self2seg_jax import __version__

    dev = jax.devices()[0]
    return {
        "self2seg_jax": __version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
        "numpy": np.__version__, "ml_dtypes": ml_dtypes.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(), "backend": jax.default_backend(),
        "device": f"{dev.platform}:{dev.id} ({getattr(dev, 'device_kind', '?')})",
        "device_count": jax.device_count(),
    }


def provenance(path=None) -> dict:
    """Everything above: versions, device, CPU model and core count, git commit and state."""
    return {**versions(), "cpu": cpu_model(), "cores": os.cpu_count(), **git_state(path)}


def run_record(path=None, argv=None) -> dict:
    """What a benchmark writes beside its figures: the command line (``argv``, default
    ``sys.argv``), the UTC date, the load average (timings under load are not comparable) and
    :func:`provenance` of ``path``'s checkout as ``machine``."""
    import datetime
    import shlex
    import sys

    return {"command": "python " + shlex.join(sys.argv if argv is None else argv),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average": list(os.getloadavg()), "machine": provenance(path)}
