"""The documentation pages (docs/, the MkDocs site) and their sections, for the tests that run their examples."""

from __future__ import annotations

import re

from support.paths import ROOT

DOCS = ROOT / "docs"


def page(name: str) -> str:
    """docs/<name>, e.g. page("doors/http.md")."""
    return (DOCS / name).read_text()


def section(text: str, title: str) -> str:
    """From the heading `title` (any level) to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(title)}\n", text, re.M)
    if match is None:
        raise KeyError(f"no heading {title!r}")
    level = len(match.group(1))
    following = re.compile(rf"^#{{1,{level}}} ", re.M)
    end = following.search(text, match.end())
    return text[match.start() : end.start() if end else len(text)]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.+?)\n```", text, re.S)
