"""Every notebook runs top to bottom in a fresh kernel against a new store, and draws its plots.

Each notebook runs in ``notebooks/`` (as Jupyter Lab runs it) with ``OBSFLOW_STORE`` pointing at
an empty temporary store, so it must create what it needs. A cell that calls a plotting
function must leave an ``image/png`` output. The committed notebooks carry no outputs.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

pytestmark = pytest.mark.integration  # servers, brokers, child processes (tests/conftest.py)

NOTEBOOKS = ROOT / "notebooks"
EXPECTED = ("bluesky_run", "explore_views", "payloads", "real_data", "replay_capture")
PLOTTING = re.compile(r"\b(plot_windows|plot_readings|imshow|subplots|mark_windows)\(|\bplt\.")
CELL_TIMEOUT = 120  # seconds


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_the_notebooks_are_there() -> None:
    assert tuple(p.stem for p in notebook_paths()) == EXPECTED
    assert (NOTEBOOKS / "README.md").is_file()


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: clear the outputs before committing"
            assert cell.execution_count is None, f"{path.name}: clear the execution counts"


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom_and_plots(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBSFLOW_STORE", str(tmp_path / "store"))
    # The kernel's own inline backend: an inherited MPLBACKEND=Agg would draw no images.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    book = nbformat.read(path, as_version=4)
    client = NotebookClient(
        book,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError on the first cell that fails

    images = 0
    for i, cell in enumerate(book.cells):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{path.name} cell {i}: {errors}"
        drawn = sum("image/png" in o.get("data", {}) for o in cell.outputs)
        if PLOTTING.search(cell.source):
            assert drawn, f"{path.name} cell {i} plots but shows no image:\n{cell.source}"
        images += drawn
    assert images >= 1
    assert (tmp_path / "store").is_dir()  # it wrote to the store it was given, not ../data
