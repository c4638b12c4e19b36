"""Open a written HTML page in headless Chromium and read back what rendered (shared by the page tests)."""
import re
import shutil
import subprocess

import pytest


def rendered(folder, page: str = "index.html") -> tuple[int, int, int]:
    """(images decoded, images, table rows) of folder/page, loaded in a frame of a harness page; fails on any other
    console line (a script error, a missing file) and skips where Chromium is not installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); the page check needs a browser")
    harness = folder / "harness.html"
    harness.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>h</title></head><body>'
                       f'<iframe src="{page}" onload="const d = this.contentDocument; console.log(\'rendered \' + '
                       '[...d.images].filter(i => i.complete && i.naturalWidth > 0).length + \' of \' + '
                       'd.images.length + \' rows \' + d.querySelectorAll(\'tr\').length)"></iframe></body></html>')
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                             "--enable-logging=stderr", "--v=0", "--dump-dom", harness.as_uri()],
                            capture_output=True, text=True, timeout=60)
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert len(console) == 1, console
    found = re.search(r'"rendered (\d+) of (\d+) rows (\d+)"', console[0])
    assert found, console[0]
    return tuple(map(int, found.groups()))
