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


def _stored_output(notebook: Path, marker: str) -> str:
    """The stored stdout of the first code cell whose output contains ``marker``."""
    import json

    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        for out in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            text = "".join(out.get("text", ""))
            if marker in text:
                return text
    raise AssertionError(f"{notebook.name} has no stored output containing {marker!r}")


def test_readme_quotes_the_notebooks_stored_output():
    """Issue 25 item 7: the numbers the README cites from a notebook are the ones the notebook
    prints (its stored output), not typed from an older run."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    out = _stored_output(ROOT / "examples" / "02_extension_guided_decoding.ipynb", "unguided:")
    m = re.search(r"unguided: ([\d.]+)\s+guided: \{0\.0: [\d.]+, 20\.0: ([\d.]+), 100\.0: ([\d.]+)\}", out)
    assert m, out
    cited = re.search(r"positive-token share ([\d.]+) unguided → ([\d.]+) at\s+β = 20 → ([\d.]+) at\s+β = 100",
                      readme)
    assert cited, "the README no longer cites notebook 02's guided shares"
    assert [float(x) for x in cited.groups()] == [float(x) for x in m.groups()], (cited.groups(), m.groups())
