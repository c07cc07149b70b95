"""The worked examples in examples/ run top to bottom (their cells assert what they show)."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))


def test_there_are_examples():
    assert [p.name for p in NOTEBOOKS][:1] == ["01_core_min_rank.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    if "ext" in path.stem:
        pytest.importorskip("torch")
        pytest.importorskip("transformers")
    nb = nbformat.read(path, as_version=4)
    # run where the notebook lives (relative paths as a reader would have them), one thread
    # per kernel so two xdist workers do not oversubscribe the two cores
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # the extension notebook's real-text base LM at its tiny size (seconds; cached once)
    monkeypatch.setenv("RANKKIT_EXAMPLE_LM_SIZE", "tiny")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
