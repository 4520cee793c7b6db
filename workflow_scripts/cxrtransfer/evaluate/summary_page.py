"""The summary rendered as a web page for the report (``summary.html`` beside ``summary.md``):
Python-Markdown with its tables extension, in a plain page whose tables are readable."""

from __future__ import annotations

import html

import markdown

STYLE = """
body { font-family: sans-serif; font-size: 14px; line-height: 1.45; max-width: 72em;
       margin: 1.5em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 13px; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: left; }
th { background: #eee; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def summary_html(text: str, title: str = "Summary") -> str:
    """``text`` (the summary's Markdown) as a standalone HTML page."""
    body = markdown.markdown(text, extensions=["tables"], output_format="html")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )
