"""MkDocs hooks: the search-space key reference is generated from the typed config at build
time, so the page cannot drift from what the reader accepts."""

from __future__ import annotations

MARKER = "<!-- yaml-reference -->"


def on_page_markdown(markdown, page, **kwargs):
    if page.file.src_uri != "reference/search-space.md":
        return markdown
    # Imported here: the package is only needed for this one page of the build.
    from shufflesearch.search.config import yaml_reference

    body = yaml_reference().split("\n", 1)[1]  # its own title gives way to the page's
    return markdown.replace(MARKER, body.strip() + "\n")
