"""The guides cite tests: each test docs/coming-from.md names, and each test file and test a how-to guide
cites, exists."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_test_the_coming_from_guide_names_exists():
    guide = (ROOT / "docs" / "coming-from.md").read_text()
    named = set(re.findall(r"\b(test_[a-z0-9_]+)\b", guide))
    files = list((ROOT / "tests").rglob("test_*.py"))
    named -= {path.stem for path in files}  # file names, not tests
    defined = set()
    for path in files:
        defined |= set(re.findall(r"^def (test_[a-z0-9_]+)", path.read_text(), flags=re.MULTILINE))
    assert len(named) > 25
    assert named <= defined, sorted(named - defined)


def test_every_test_file_and_test_a_how_to_guide_cites_exists():
    cited = 0
    for page in sorted((ROOT / "docs" / "how-to").glob("*.md")):
        text = re.sub(r"::\s*\n\s*", "::", page.read_text())  # a citation wrapped after its "::"
        for path, name in re.findall(r"\b(tests/[\w/]+\.py)(?:::(test_\w+))?", text):
            cited += 1
            assert (ROOT / path).is_file(), f"{page.name} cites {path}, which does not exist"
            if name:
                defined = re.findall(r"^def (test_\w+)", (ROOT / path).read_text(), flags=re.MULTILINE)
                assert name in defined, f"{page.name} cites {path}::{name}, which does not exist"
    assert cited > 5


def test_every_file_the_readme_links_to_exists():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert len(local) > 15  # the picture, the site's pages, CHANGELOG.md, CONTRIBUTING.md
    missing = [link for link in local if not (ROOT / link).is_file()]
    assert not missing, missing
