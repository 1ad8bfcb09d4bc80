"""The Colab notebooks: stored without outputs, each with an "Open in Colab" badge for its own
path, and executed top to bottom (slow) with the smoke preset on this CPU machine. A cell that
raises fails the test; the notebooks assert their own invariants (hand-computed loss values, the
sharded step equal to the single-device step)."""

import json
import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
NAMES = [path.name for path in NOTEBOOKS]


def test_the_three_notebooks_are_stored_clean_with_a_colab_badge():
    assert NAMES == ["01_quickstart.ipynb", "02_custom_loss.ipynb", "03_scaling.ipynb"]
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name
        badge = (
            f"colab.research.google.com/github/rlhf-jax/rlhf_jax/blob/main/notebooks/{path.name}"
        )
        assert badge in notebook.cells[0].source, path.name


@pytest.fixture(scope="module")
def notebook_workdir(tmp_path_factory):
    """One workdir for the module, so 02 reuses the stages 01 ran (as it does on Colab)."""
    return tmp_path_factory.mktemp("notebooks")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name, notebook_workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_JAX_NOTEBOOK_PRESET", "smoke")
    monkeypatch.setenv("RLHF_JAX_NOTEBOOK_WORKDIR", str(notebook_workdir))
    # The kernel is a fresh process: one CPU device unless the notebook asks for more (03 does).
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOKS[NAMES.index(name)], as_version=4)
    client = NotebookClient(
        notebook,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if name == "01_quickstart.ipynb":
        images = [o for o in outputs if "image/png" in o.get("data", {})]
        assert len(images) == 2  # the win-rate bars and the PPO curves, shown inline
        with open(os.path.join(notebook_workdir, "metrics.json")) as f:
            assert set(json.load(f)["models"]) >= {"sft_small", "ppo_small", "ppo_ptx_small"}
    if name == "02_custom_loss.ipynb":
        for loss in ("kwise_ranking", "hinge_ranking"):
            summary = notebook_workdir / "notebook_rm" / loss / "summary.json"
            assert 0.0 <= json.loads(summary.read_text())["heldout_pairwise_accuracy"] <= 1.0
    if name == "03_scaling.ipynb":
        text = "".join(o.get("text", "") for o in outputs)
        assert "8 devices" in text and "'data': 2, 'fsdp': 2, 'tensor': 2" in text
