"""English prose from the Debian package ``debian-reference-en`` (Debian Reference,
GPL-2+), as plain-text paragraphs, split into disjoint train / calibration / test parts.

The package installs the book as DocBook XHTML under ``/usr/share/debian-reference``
(``apt-get install debian-reference-en``; ``tools/setup_env.sh`` does it as root).
:func:`html_paragraphs` keeps the text of each ``<p>`` element, with the standard
library's ``html.parser``: navigation bars, tables of contents, tables, code listings
(``<pre>``) and captions (``<p class="title">``) are left out, whitespace collapsed.

:func:`split_paragraphs`: the paragraphs, in book order with duplicates dropped, are cut
into blocks of ``block`` (10) consecutive paragraphs; block ``j`` goes to "test" when
``j % 10 == 0``, to "calibration" when ``j % 10 == 5`` and to "train" otherwise (about
80 / 10 / 10 %).  Whole blocks keep neighbouring, topically related paragraphs on the
same side; after dropping repeats no paragraph (compared with whitespace collapsed)
is in two parts.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

__all__ = ["DEBIAN_REFERENCE", "SPLITS", "debian_reference_paragraphs", "html_paragraphs", "split_paragraphs"]

#: where ``debian-reference-en`` installs the English XHTML pages
DEBIAN_REFERENCE = Path("/usr/share/debian-reference")
#: the parts :func:`split_paragraphs` returns
SPLITS = ("train", "calibration", "test")
#: book order: preface, chapters 1-12, appendix (the index page is a table of contents)
_PAGES = ["pr01"] + [f"ch{i:02d}" for i in range(1, 13)] + ["apa"]
_SKIP_DIVS = {"toc", "navheader", "navfooter", "list-of-tables", "list-of-figures", "list-of-examples"}
_SKIP_TAGS = {"pre", "table", "script", "style"}


class _Paragraphs(HTMLParser):
    """Collects the text of ``<p>`` elements outside skipped regions."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._buf: list[str] | None = None
        self._skip = 0
        self._divs: list[bool] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        cls = dict(attrs).get("class") or ""
        if tag == "div":
            skipped = cls in _SKIP_DIVS
            self._divs.append(skipped)
            self._skip += skipped
        elif tag in _SKIP_TAGS:
            self._skip += 1
        elif tag == "p" and not self._skip and cls != "title":
            self._buf = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._divs:
            self._skip -= self._divs.pop()
        elif tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
        elif tag == "p" and self._buf is not None:
            text = _norm("".join(self._buf))
            if text:
                self.paragraphs.append(text)
            self._buf = None

    def handle_data(self, data: str) -> None:
        if self._buf is not None and not self._skip:
            self._buf.append(data)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def html_paragraphs(html: str, min_chars: int = 40) -> list[str]:
    """The plain text of the ``<p>`` elements of an HTML page, in order, whitespace
    collapsed, those shorter than ``min_chars`` characters dropped (see the module doc
    for what is left out)."""
    if not isinstance(html, str):
        raise TypeError(f"html must be a str, got {type(html).__name__}")
    parser = _Paragraphs()
    parser.feed(html)
    parser.close()
    return [p for p in parser.paragraphs if len(p) >= min_chars]


def debian_reference_paragraphs(root: Path = DEBIAN_REFERENCE) -> list[str]:
    """All paragraphs of the English Debian Reference, in book order (with repeats).

    Raises:
        FileNotFoundError: the package is not installed; the message names the command.
    """
    pages = [Path(root) / f"{name}.en.html" for name in _PAGES]
    missing = [p for p in pages if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} not found: install the Debian package with "
                                "`apt-get install debian-reference-en` (part of `bash tools/setup_env.sh` as root)")
    out: list[str] = []
    for page in pages:
        out.extend(html_paragraphs(page.read_text(encoding="utf-8")))
    return out


def split_paragraphs(paragraphs: list[str], block: int = 10) -> dict[str, list[str]]:
    """Disjoint "train" / "calibration" / "test" parts of ``paragraphs`` (module doc).

    Repeats (equal after collapsing whitespace) are dropped first, keeping the first
    occurrence, so the three parts share no paragraph.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    seen: set[str] = set()
    unique = []
    for p in paragraphs:
        key = _norm(p)
        if key and key not in seen:
            seen.add(key)
            unique.append(p)
    parts: dict[str, list[str]] = {s: [] for s in SPLITS}
    for i, p in enumerate(unique):
        j = (i // block) % 10
        parts["test" if j == 0 else "calibration" if j == 5 else "train"].append(p)
    return parts
