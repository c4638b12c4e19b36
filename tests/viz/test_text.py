import pytest

from relprop import viz


def test_tokens_are_escaped_and_coloured_by_relevance():
    fragment = viz.html(["<script>", "good", "bad"], [0.0, 2.0, -2.0], cmap="bwr")
    assert "<script>" not in fragment and "&lt;script&gt;" in fragment
    assert 'background-color: rgb(255, 0, 0); color: #fff" title="2">good' in fragment
    assert 'background-color: rgb(0, 0, 255); color: #fff" title="-2">bad' in fragment
    assert 'background-color: rgb(255, 255, 255); color: #000" title="0">&lt;script&gt;' in fragment


def test_quotes_in_tokens_cannot_break_out_of_the_markup():
    assert '"><b>' not in viz.html(['"><b>'], [1.0])


def test_text_needs_one_value_per_token():
    with pytest.raises(ValueError, match="2 tokens but 3"):
        viz.html(["a", "b"], [1.0, 2.0, 3.0])


def test_page_wraps_a_fragment_in_a_complete_document():
    document = viz.page(viz.html(["a"], [1.0]), title="<t>")
    assert document.startswith("<!DOCTYPE html>") and "<title>&lt;t&gt;</title>" in document
