"""examples/quickstart.ipynb runs top to bottom on a real Jupyter kernel against a built run,
and its cells show what they claim to."""

import shutil
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"


def _text(cell) -> str:
    out = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            out.append(o["text"])
        elif "data" in o:
            out.append(o["data"].get("text/plain", ""))
            out.append(o["data"].get("text/html", ""))
    return "\n".join(out)


def test_quickstart_notebook_runs_on_a_real_kernel(small_run, tmp_path):
    shutil.copytree(small_run[0], tmp_path / "runs")  # the notebook reads ./runs
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    opened, table, samples, scored, curve, image, drawn = (_text(c) for c in code)
    assert "Run(key=" in opened and "ioi-tiny" in opened
    assert "fcr" in table and "chance" in table and "refusal_rate" in table
    assert "distance" in samples and "subject_ref" in samples
    assert "first_name" in scored and "n_examples" in scored
    assert "epsilon" in curve and "0.4" in curve
    assert any("image/png" in o.get("data", {}) for o in code[5].get("outputs", []))
    assert (tmp_path / "fcr_curve.png").stat().st_size > 1000
    assert "distance" in drawn and "accepted" in drawn and "16" in drawn
