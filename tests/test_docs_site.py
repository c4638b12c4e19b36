"""The documentation site builds with `mkdocs build --strict` (what scripts/docs.sh runs) and opens from file://."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

from browser import rendered

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocstrings", reason="the docs extra (pip install -e .[docs]) builds the site")
    folder = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(folder)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_every_page_in_the_navigation_is_built_as_an_html_file(site):
    for page in ["index.html", "getting-started.html", "coming-from.html", "notebooks/image-classifier.html",
                 "notebooks/tokens.html", "notebooks/audit.html",
                 "reference/lrp.html",
                 "reference/rules.html", "reference/composites.html", "reference/attribution.html",
                 "reference/clusters-graphs-language.html",
                 "reference/viz.html", "how-to/composites.html", "how-to/custom-rule.html",
                 "how-to/transformers.html", "how-to/recurrent.html", "how-to/graphs.html", "how-to/attribution.html",
                 "how-to/concepts.html", "how-to/clusters.html", "how-to/clarc.html",
                 "install.html", "cli.html", "benchmarks.html", "architecture.html", "how-to/explain.html",
                 "how-to/op-family.html", "how-to/canonizers.html", "how-to/datasets.html", "how-to/evaluate.html"]:
        assert (site / page).is_file(), page


def test_the_reference_is_read_from_the_docstrings_of_the_code(site):
    rules = (site / "reference" / "rules.html").read_text()
    for name in ["Epsilon", "Gamma", "AlphaBeta", "ZBox", "Flat"]:
        assert f'id="relprop.rules.{name}"' in rules, name
    assert 'id="relprop.LRP"' in (site / "reference" / "lrp.html").read_text()


def test_pages_open_from_file_urls_without_errors_and_link_by_file_name(site):
    # rendered() fails on any console line: a script or stylesheet that cannot load from file:// shows up there
    assert rendered(site, "index.html") == (0, 0, 0)
    assert rendered(site, "getting-started.html")[2] > 1  # the table of Explanation's attributes
    index = (site / "index.html").read_text()
    assert 'href="getting-started.html"' in index  # no directory URLs: file:// has no index.html lookup


def test_how_to_pages_one_folder_down_load_their_pictures_from_file_urls(site):
    decoded, images, rows = rendered(site, "how-to/concepts.html")
    assert images >= 2 and decoded == images  # ../concepts-atlas.png, ../concepts-page.png
    assert rendered(site, "how-to/composites.html")[2] > 20  # the composites' and rules' tables


def test_every_public_name_has_an_entry_in_the_reference(site):
    # a function named like its module (evaluate.benchmark, viz.heatmap) is hidden by the module in the package's
    # page, so the reference lists it by its full path: an entry under either name counts
    import importlib
    import re

    from test_docstrings import PUBLIC_MODULES, public_names

    ids = {found for page in (site / "reference").glob("*.html")
           for found in re.findall(r'id="(relprop[\w.]*)"', page.read_text())}
    paths = {}  # each public object: every name it has (re-exported names too, and where it is defined)
    for module in PUBLIC_MODULES:
        for name, value in public_names(importlib.import_module(module)):
            paths.setdefault(id(value), {f"{value.__module__}.{value.__qualname__}"}).add(f"{module}.{name}")
    missing = sorted(min(names) for names in paths.values() if not names & ids)
    assert not missing, missing


def test_every_link_to_a_section_of_a_page_finds_that_section(site):
    # mkdocs --strict checks that linked pages exist, not the #section after them
    checked = 0
    for page in site.rglob("*.html"):
        if "assets" in page.parts:
            continue
        text = page.read_text()
        for target, anchor in re.findall(r'href="([\w./-]*\.html)?#([\w-]+)"', text):
            linked = (page.parent / target).resolve() if target else page
            if not linked.is_file() or linked.parent == site / "assets":
                continue
            assert f'id="{anchor}"' in linked.read_text(), f"{page.relative_to(site)} links to {target}#{anchor}"
            checked += bool(target)
    assert checked > 10  # links into other pages' sections (the how-to guides, benchmarks, the command line)
