"""Markdown to HTML for the report page."""

from recoverlm.report.html import markdown_to_html


def test_markdown_to_html_tables_and_missing_images(tmp_path):
    page = markdown_to_html("# T\n\n- a **b**\n\n| x | y |\n|---|---|\n| 1 | 2 |\n\n![p](nope.png)\n", tmp_path)
    assert "<h1>T</h1>" in page and "<strong>b</strong>" in page and "<td>1</td>" in page and 'src="nope.png"' in page


def test_model_text_in_a_table_cell_is_shown_literally(tmp_path):
    from recoverlm.report.summary import samples_table

    hostile = "a | b\n<script>alert(1)</script> **not bold** `x` [l](http://e) &amp;"
    page = markdown_to_html(samples_table([{"prompt": "p", "teacher": hostile, "recovered": ""}]), tmp_path)
    assert page.count("<tr>") == 2 and page.count("<td") == 3  # the | did not split the cell
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<strong>" not in page and "<a " not in page and "**not bold**" in page and "&amp;amp;" in page
    assert "a | b<br>" in page and "(empty)" in page
