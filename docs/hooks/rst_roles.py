"""MkDocs hook: the reST roles of our docstrings (:class:`X`, :func:`~a.b.c`, ...) shown as code.

The docstrings are written for both help() and these pages; mkdocstrings renders them as Markdown, where
``:class:`X``` would show the role's name. The role goes, the name stays as code (``~`` keeps its last
part, as in Sphinx), and a reST literal-block marker ``Example::`` ends with one colon.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const|ref|doc|term):<code>(~?)([^<]*)</code>")


def _name(match: re.Match) -> str:
    short, name = match.group(1), match.group(2)
    return f"<code>{name.rsplit('.', 1)[-1] if short else name}</code>"


def on_page_content(html: str, **kwargs) -> str:
    html = ROLE.sub(_name, html)
    return re.sub(r"::</p>", ":</p>", html)
