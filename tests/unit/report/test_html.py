"""Markdown to HTML for the report page."""

from recoverlm.report.html import markdown_to_html


def test_markdown_to_html_tables_and_missing_images(tmp_path):
    page = markdown_to_html("# T\n\n- a **b**\n\n| x | y |\n|---|---|\n| 1 | 2 |\n\n![p](nope.png)\n", tmp_path)
    assert "<h1>T</h1>" in page and "<strong>b</strong>" in page and "<td>1</td>" in page and 'src="nope.png"' in page
