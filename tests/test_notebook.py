"""notebooks/quickstart.ipynb: saved without outputs, and executes end to end (tiny sizes).

The notebook runs in a kernel of THIS interpreter: the test writes a kernelspec pointing at
``sys.executable`` into a temporary Jupyter data folder (``JUPYTER_PATH``), so it works in a
fresh virtualenv and never picks up some other ``python3`` kernel installed on the machine.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
KERNEL = "self2seg-test-kernel"

# Values for the notebook's parameter cell (every name must be set).
TINY = {
    "SIZE": 32,
    "NOISE": 30.0,
    "STEPS": 20,
    "NET_WIDTH": 8,
    "NET_DEPTH": 1,
    "MAX_OUTER": 2,
    "PD_MAX_ITER": 300,
    "INIT_DENOISE": False,
    "LAMS": [0.01, 0.05],
    "SWEEP_STEPS": 20,
    "SWEEP_MAX_OUTER": 2,
    "LEARN_STEPS": 2,
    "SEED": 0,
}


def _read():
    return nbformat.read(NOTEBOOK, as_version=4)


def _parameter_cell(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    return cells[0]


def test_notebook_is_saved_without_outputs():
    nb = _read()
    nbformat.validate(nb)
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None, c.source[:60]
    assert nb.cells.index(_parameter_cell(nb)) <= 2  # parameters come first


def _kernelspec(root: Path) -> None:
    d = root / "kernels" / KERNEL
    d.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "self2seg test kernel",
        "language": "python",
    }
    (d / "kernel.json").write_text(json.dumps(spec))


def test_notebook_executes(tmp_path, monkeypatch):
    nb = _read()
    cell = _parameter_cell(nb)
    names = re.findall(r"^([A-Z][A-Z0-9_]*)\s*=", cell.source, re.M)
    assert sorted(names) == sorted(TINY), "parameter cell and TINY disagree"
    cell.source = "\n".join(f"{k} = {v!r}" for k, v in TINY.items())

    _kernelspec(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError (with the traceback) if any cell fails

    text = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
        if o.get("output_type") == "stream"
    )
    assert "Dice" in text and "PSNR" in text
    assert "lam auto -> " in text
    html = "\n".join(
        o.get("data", {}).get("text/html", "") for c in nb.cells if c.cell_type == "code"
        for o in c.outputs if o.get("output_type") in ("display_data", "update_display_data"))
    assert "<progress value=" in html and "outer" in html  # the bar, auto-detected
    assert "lambda values in one call" in text
    assert "no recompilation" in text
    for lam in TINY["LAMS"]:
        assert f"lam {lam:<7g} Dice" in text
