"""The guide docs/coming-from.md backs every row with a test: each test it names exists."""
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
