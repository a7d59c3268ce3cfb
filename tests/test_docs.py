"""The documentation: the README stays a short entry page whose links reach the docs pages and their
headings, every page is in the site's navigation, and the API pages name modules that exist.

``make docs`` (``mkdocs build --strict``) checks the links of the docs pages themselves and renders the
API pages from the docstrings; these checks need no docs tools and run with ``make test``. The
commands of the pages are run by ``tests/test_readme_commands.py``.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
#: The README is the set-up, a short tour and links; the guide lives in docs/.
README_MAX_LINES = 300


def slug(title: str) -> str:
    """A heading's anchor as Python-Markdown's ``toc`` makes it (GitHub's agrees on ASCII headings)."""
    text = unicodedata.normalize("NFKD", title.replace("`", "")).encode("ascii", "ignore").decode()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings (outside code blocks)."""
    found, fence = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and re.match(r"#{1,6} ", line):
            found.add(slug(line.lstrip("#").strip()))
    return found


def test_pages_exist_and_readme_is_short():
    assert {"index.md", "data.md", "models.md", "training.md"} <= {p.name for p in PAGES}
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move the guide into docs/"


@pytest.mark.parametrize("source", [README, *PAGES], ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_reach_files_and_headings(source):
    text = re.sub(r"^```.*?^```", "", source.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        target = (source.parent / path).resolve() if path else source
        assert target.exists(), f"{source.name}: {link}: {target} does not exist"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target), f"{source.name}: {link}: no heading with that anchor"


def test_every_page_is_in_the_navigation():
    yaml = pytest.importorskip("yaml")

    def files(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for value in node.values():
                yield from files(value)
        elif isinstance(node, list):
            for value in node:
                yield from files(value)

    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = {name for name in files(config["nav"]) if name.endswith(".md")}
    pages = {p.relative_to(DOCS).as_posix() for p in PAGES}
    assert nav == pages, f"not in the nav: {sorted(pages - nav)}; no such page: {sorted(nav - pages)}"


def test_api_pages_name_modules_that_exist():
    names = [
        name
        for page in (DOCS / "api").glob("*.md")
        for name in re.findall(r"^::: ([\w.]+)", page.read_text(encoding="utf-8"), flags=re.MULTILINE)
    ]
    assert "mpnn_ip.models" in names
    for name in names:
        path = REPO.joinpath(*name.split("."))
        assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), f"docs/api: no module {name}"
