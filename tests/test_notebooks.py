"""The tutorial notebooks under docs/notebooks run from top to bottom without an error, in a scratch folder, on the
kernel of this environment (the docs site executes them again when it is built)."""
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "docs" / "notebooks").glob("*.ipynb"))


def test_there_are_tutorial_notebooks_and_the_site_lists_each():
    assert NOTEBOOKS
    navigation = (ROOT / "mkdocs.yml").read_text()
    assert all(f"notebooks/{notebook.name}" in navigation for notebook in NOTEBOOKS)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_the_notebook_runs_without_errors_and_its_explanations_draw_themselves(notebook, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="the docs extra (pip install -e .[docs]) runs the notebooks")
    nbclient = pytest.importorskip("nbclient")
    # the kernel imports the relprop this test imports, also where PYTHONPATH points at a checkout's src/
    source = str(pathlib.Path(__import__("relprop").__file__).parent.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])))
    document = nbformat.read(notebook, as_version=4)
    assert all(not cell.get("outputs") for cell in document.cells if cell.cell_type == "code"), \
        "commit notebooks without outputs: the site and this test make them"
    nbclient.NotebookClient(document, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
                            ).execute()
    outputs = [output for cell in document.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    pages = [output["data"]["text/html"] for output in outputs if "text/html" in output.get("data", {})]
    if notebook.stem == "image-classifier":
        assert any(page.count("<img") == 6 for page in pages)  # the Explanation drew its six heatmaps
        assert any("relevance in" in page and "<table>" in page for page in pages)  # and the report its table
    if notebook.stem == "audit":  # SpRAy isolates the marked crosses, and P-ClArC removes the mark's effect
        text = "".join(output.get("text", "") for output in outputs)
        assert re.search(r"cluster \d: +\d+ crosses, 100% of them marked", text), text
        rises = [float(value) for value in re.findall(r"raises the cross logit by (-?[\d.]+)", text)]
        accuracies = [float(value) for value in re.findall(r"clean accuracy ([\d.]+)%", text)]
        assert rises[1] <= 0.2 * rises[0] and accuracies[1] >= accuracies[0] - 1, text
    if notebook.stem == "tokens":  # the markers that decide the toy language's class get most of the relevance
        text = "".join(output.get("text", "") for output in outputs)
        share = re.search(r"markers are (\d+)% of the tokens and get (\d+)% of the relevance", text)
        assert share and int(share.group(2)) > 3 * int(share.group(1)), text
