"""Every Python code block of the documentation site and of README.md runs: a page's blocks run in order in one
namespace (later blocks use what earlier ones made), in a scratch folder. A block that cannot run here is preceded
by `<!-- not run: reason -->`, and the reason is required. A ```text block right after a Python block is what that
block prints: the test compares it with the printed output, numbers to 0.1% (or 1e-5), the rest word for word."""
import contextlib
import io
import math
import pathlib
import re

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
BLOCK = re.compile(r"(?:<!--\s*not run:(?P<why>[^>]*)-->\s*\n)?```python\n(?P<code>.*?)```"
                   r"(?:[ \t]*\n\s*```text\n(?P<output>.*?)```)?", re.DOTALL)
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def blocks(page: pathlib.Path) -> list[tuple[int, str, str | None, str | None]]:
    """(line, code, reason not run, output shown) of each Python block on the page."""
    text = page.read_text()
    return [(text.count("\n", 0, found.start("code")), found.group("code"),
             found.group("why").strip() if found.group("why") is not None else None, found.group("output"))
            for found in BLOCK.finditer(text)]


def differences(shown: str, printed: str) -> str | None:
    """Why the printed output is not the one shown (None when it is): the words must match, the numbers agree."""
    shown_words, printed_words = NUMBER.split(shown), NUMBER.split(printed)
    if [" ".join(w.split()) for w in shown_words] != [" ".join(w.split()) for w in printed_words]:
        return f"the page shows\n{shown}\nbut the block printed\n{printed}"
    for a, b in zip(NUMBER.findall(shown), NUMBER.findall(printed)):
        if not math.isclose(float(a), float(b), rel_tol=1e-3, abs_tol=1e-5):
            return f"the page shows {a} where the block printed {b}:\n{printed}"
    return None


def test_the_collector_finds_the_blocks_of_the_getting_started_page_and_of_the_readme():
    found = blocks(ROOT / "docs" / "getting-started.md")
    assert len(found) >= 3 and all(why is None for _, _, why, _ in found)
    readme = blocks(ROOT / "README.md")
    assert len(readme) >= 3 and all(why is None for _, _, why, _ in readme)
    assert any(output for *_, output in readme)  # the audit's clusters, checked against what it prints


def test_a_shown_output_must_match_the_printed_one_in_words_and_numbers():
    assert differences("kmeans-2 [27, 96]\n", "kmeans-2 [27, 96]\n") is None
    assert differences("delta 0.1235\n", "delta   0.12351\n") is None  # spacing and the last digit's rounding
    assert "27" in differences("kmeans-2 [27, 96]\n", "kmeans-2 [30, 93]\n")
    assert differences("kmeans-2 [27, 96]\n", "kmeans-3 [27, 96]\n") is not None  # "-3" differs, read as a number
    assert differences("sum 1.0\n", "total 1.0\n") is not None


@pytest.mark.parametrize("page", [page for page in PAGES if blocks(page)],
                         ids=lambda page: str(page.relative_to(ROOT / "docs") if page.parent != ROOT else page.name))
def test_every_python_block_on_the_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = {"__name__": "__docs__"}
    for line, code, why, shown in blocks(page):
        if why is not None:
            assert why, f"{page.name}:{line}: a block marked not run must say why"
            continue
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        except Exception as error:  # the page and line make the failure findable
            raise AssertionError(f"the block at {page.name} line {line} failed: {error!r}") from error
        if shown is not None:
            problem = differences(shown, printed.getvalue())
            assert problem is None, f"{page.name} line {line}: {problem}"
