"""relprop.progress.Progress: lines the caller words, off a terminal; nothing when disabled or the line is None."""
import io

from relprop.progress import Progress


def test_each_update_prints_the_callers_line_with_counts_and_rate():
    stream = io.StringIO()
    meter = Progress(10, done=4, unit="sample", stream=stream,
                     line=lambda p: f"{p.done}/{p.total} new {p.new} skipped {p.skipped}")
    meter.update(3)
    meter.skipped += 1
    meter.update(3)
    meter.close()
    assert stream.getvalue() == "7/10 new 3 skipped 0\n10/10 new 6 skipped 1\n"
    assert meter.elapsed() >= 0 and meter.bar is None


def test_no_line_when_disabled_or_when_the_line_is_none():
    stream = io.StringIO()
    Progress(3, stream=stream, enabled=False, line=lambda p: "shown").update(1)
    Progress(3, stream=stream, line=lambda p: None).update(1)
    assert stream.getvalue() == ""
