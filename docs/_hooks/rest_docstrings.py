"""MkDocs hook: render the reST parts of dgrn's docstrings in the API reference.

The docstrings use Google-style sections (mkdocstrings parses those) with reST roles and directives in the text:
``:func:`~dgrn.tn.MPS``` becomes a cross-reference (through mkdocs-autorefs: resolved when the object is documented,
plain code otherwise), ``:math:`x``` inline math and a ``.. math::`` paragraph display math (rendered by MathJax
through ``pymdownx.arithmatex``'s generic output). Only pages under ``api/`` are touched.
"""
from __future__ import annotations

import html
import re

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|obj|exc|const):<code>(~?)([^<]*)</code>")
INLINE_MATH = re.compile(r":math:<code>([^<]*)</code>")
DISPLAY_MATH = re.compile(r"<p>\.\. math::\s*(.*?)</p>", re.S)


def _role(match: re.Match) -> str:
    short, target = match.group(1), match.group(2).strip()
    target = target.rstrip("()")
    title = target.rsplit(".", 1)[-1] if short else target
    return f'<autoref identifier="{html.escape(target)}" optional><code>{html.escape(title)}</code></autoref>'


def _display(match: re.Match) -> str:
    body = re.sub(r"<[^>]+>", "", match.group(1)).strip()  # markdown may have wrapped parts of it in tags
    return f'<div class="arithmatex">\\[\n{body}\n\\]</div>'


def on_page_content(html_text: str, page, **kwargs) -> str:
    if not page.file.src_uri.startswith("api/"):
        return html_text
    html_text = ROLE.sub(_role, html_text)
    html_text = INLINE_MATH.sub(lambda m: f'<span class="arithmatex">\\({m.group(1)}\\)</span>', html_text)
    return DISPLAY_MATH.sub(_display, html_text)
