"""Every Python code block of the documentation site runs: a page's blocks run in order in one namespace (later
blocks use what earlier ones made), in a scratch folder. A block that cannot run here is preceded by
`<!-- not run: reason -->`, and the reason is required."""
import pathlib
import re

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").rglob("*.md"))
BLOCK = re.compile(r"(?:<!--\s*not run:(?P<why>[^>]*)-->\s*\n)?```python\n(?P<code>.*?)```", re.DOTALL)


def blocks(page: pathlib.Path) -> list[tuple[int, str, str | None]]:
    """(line, code, reason not run) of each Python block on the page."""
    text = page.read_text()
    return [(text.count("\n", 0, found.start("code")), found.group("code"),
             found.group("why").strip() if found.group("why") is not None else None)
            for found in BLOCK.finditer(text)]


def test_the_collector_finds_the_blocks_of_the_getting_started_page():
    found = blocks(ROOT / "docs" / "getting-started.md")
    assert len(found) >= 3 and all(why is None for _, _, why in found)


@pytest.mark.parametrize("page", [page for page in PAGES if blocks(page)],
                         ids=lambda page: str(page.relative_to(ROOT / "docs")))
def test_every_python_block_on_the_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = {"__name__": "__docs__"}
    for line, code, why in blocks(page):
        if why is not None:
            assert why, f"{page.name}:{line}: a block marked not run must say why"
            continue
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        except Exception as error:  # the page and line make the failure findable
            raise AssertionError(f"the block at {page.name} line {line} failed: {error!r}") from error
