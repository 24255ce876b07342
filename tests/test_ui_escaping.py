"""The UI's text rendering: HTML from documents and the model shows as text, code keeps its characters, and
upload names stay one code span whatever they hold (the browser side is tests/test_browser_hostile.py)."""

from __future__ import annotations

from assistant.ui import as_code, as_text, render_messages


def test_html_outside_code_is_escaped_and_code_is_kept():
    assert as_text("<img src=x onerror=alert(1)> & co") == "&lt;img src=x onerror=alert(1)&gt; &amp; co"
    assert as_text("use `a < b` here") == "use `a < b` here"
    assert as_text("```\n<script>x</script>\n```\n<b>") == "```\n<script>x</script>\n```\n&lt;b&gt;"
    assert as_text("**bold** [1]") == "**bold** [1]"  # Markdown itself still renders


def test_upload_names_stay_one_code_span():
    assert as_code("a.md") == "`a.md`"
    assert as_code("a`<b>`.md") == "`` a`<b>`.md ``"
    assert as_code("x``y.md") == "``` x``y.md ```"


def test_questions_answers_and_source_titles_are_rendered_as_text():
    turn = {"question": "<script>q</script>", "answer": "<img src=x onerror=1> [1]",
            "sources": [{"title": "[1] a.md › <img src=x>", "snippet": "<b>s</b>", "path": "a.md", "cited": True}]}
    messages = render_messages([turn])
    assert messages[0]["content"] == "&lt;script&gt;q&lt;/script&gt;"
    assert messages[1]["content"].startswith("&lt;img src=x onerror=1&gt; [1]")
    assert messages[2]["metadata"]["title"] == "[1] a.md › &lt;img src=x&gt;"
    assert messages[2]["content"] == "&lt;b&gt;s&lt;/b&gt;"
