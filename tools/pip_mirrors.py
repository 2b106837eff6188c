"""Print pip source settings that read on-disk index mirrors as flat wheel folders.

Some machines' pip configuration lists on-disk mirrors as extra *indexes*
(``extra-index-url = file:///opt/pypi/simple ...``) that hold only part of PyPI.
For every project such a mirror lacks, pip prints ``WARNING: Location
'file:///.../simple/<project>/' is ignored: it is neither a file nor a directory``
(pypa/pip#8149), although nothing is wrong.  When the mirror keeps its wheels in a
flat ``files/`` folder beside ``simple/`` (the folder its index pages link to), pip
finds the same wheels through ``--find-links`` on that folder, which does not warn.

Output, two lines for ``PIP_EXTRA_INDEX_URL`` and ``PIP_FIND_LINKS``: the configured
extra indexes less the converted mirrors, and the configured find-links plus their
``files/`` folders.  Nothing is printed when no mirror can be converted.  Nothing is
changed either: the caller exports the values for its own pip runs only.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

_OPTIONS = ("extra-index-url", "find-links")


def configured() -> dict[str, list[str]]:
    """The effective values of ``_OPTIONS`` as pip reads them: environment variables
    override ``install.*`` keys, which override ``global.*`` keys."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    rank = {"global": 0, "install": 1}
    best: dict[str, tuple[int, list[str]]] = {}
    for line in out.splitlines():
        key, sep, raw = line.partition("=")
        section, _, name = key.rpartition(".")
        if not sep or name not in _OPTIONS or section not in rank:
            continue
        if rank[section] >= best.get(name, (-1, []))[0]:
            best[name] = (rank[section], ast.literal_eval(raw).split())
    values = {name: best.get(name, (0, []))[1] for name in _OPTIONS}
    for name in _OPTIONS:
        env = os.environ.get("PIP_" + name.upper().replace("-", "_"))
        if env is not None:
            values[name] = env.split()
    return values


def flat_folder(index_url: str) -> Path | None:
    """``<mirror>/files`` for an index ``file://<mirror>/simple`` whose wheels lie there."""
    parsed = urlparse(index_url)
    if parsed.scheme != "file":
        return None
    simple = Path(unquote(parsed.path)).resolve()
    files = simple.parent / "files"
    if simple.name != "simple" or not files.is_dir() or not any(files.glob("*.whl")):
        return None
    return files


def main() -> int:
    values = configured()
    keep, links = [], list(values["find-links"])
    for url in values["extra-index-url"]:
        folder = flat_folder(url)
        if folder is None:
            keep.append(url)
        elif str(folder) not in links:
            links.append(str(folder))
    if len(keep) < len(values["extra-index-url"]):
        print(" ".join(keep))
        print(" ".join(links))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
