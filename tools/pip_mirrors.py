"""pip settings that read on-disk index mirrors as flat wheel folders, for setup_env.sh.

Some machines' pip configuration lists on-disk mirrors as extra *indexes*
(``extra-index-url = file:///opt/pypi/simple ...``) that hold only part of PyPI.
For every project such a mirror lacks, pip prints ``WARNING: Location
'file:///.../simple/<project>/' is ignored: it is neither a file nor a directory``
(pypa/pip#8149), although nothing is wrong.  When the mirror keeps its wheels in a
flat ``files/`` folder beside ``simple/`` (the folder its index pages link to), pip
finds the same wheels through ``--find-links`` on that folder, which does not warn.

pip cannot be told to drop a configured extra index (an empty environment variable
is ignored), so ``python tools/pip_mirrors.py CONF`` writes every setting pip
currently reads from its configuration files into the new file CONF, with the
mirrors moved from extra-index-url to find-links, and prints the shell commands that
make this script's caller use it: ``PIP_CONFIG_FILE=CONF`` (pip then skips the
per-user file, whose settings CONF repeats) and the same change to ``PIP_FIND_LINKS``
/ ``PIP_EXTRA_INDEX_URL`` where those are set.  Nothing is written or printed when
no mirror can be converted; no configuration file of the machine is changed.
"""

from __future__ import annotations

import ast
import os
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

_INDEX, _LINKS = "extra-index-url", "find-links"


def configured() -> dict[str, dict[str, str]]:
    """{section: {key: value}} of the settings pip reads from its configuration
    files (not the environment), as ``pip config list`` reports them."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    sections: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        key, sep, raw = line.partition("=")
        section, _, name = key.partition(".")
        if sep and name and section != ":env:":
            sections.setdefault(section, {})[name] = ast.literal_eval(raw)
    return sections


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


def convert(indexes: str, links: str) -> tuple[str, str, list[str]]:
    """Move the convertible mirrors of the whitespace-separated ``indexes`` to
    ``links``; returns (indexes kept, links, flat folders moved)."""
    keep, out, moved = [], links.split(), []
    for url in indexes.split():
        folder = flat_folder(url)
        if folder is None:
            keep.append(url)
            continue
        moved.append(str(folder))
        if str(folder) not in out:
            out.append(str(folder))
    return " ".join(keep), " ".join(out), moved


def _write_config(path: Path, sections: dict[str, dict[str, str]]) -> None:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in values.items() if value]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tools/pip_mirrors.py NEW_PIP_CONF", file=sys.stderr)
        return 2
    sections, moved, exports = configured(), [], []
    for values in sections.values():
        if _INDEX in values:
            values[_INDEX], values[_LINKS], m = convert(values[_INDEX], values.get(_LINKS, ""))
            moved += m
    env_index = os.environ.get("PIP_EXTRA_INDEX_URL")
    if env_index is not None:  # environment variables win over the files
        keep, _, m = convert(env_index, "")
        if m:
            moved += m
            exports.append(f"export PIP_EXTRA_INDEX_URL={shlex.quote(keep)}" if keep else "unset PIP_EXTRA_INDEX_URL")
    if not moved:
        return 0
    env_links = os.environ.get("PIP_FIND_LINKS")
    if env_links is not None:
        links = " ".join(dict.fromkeys(env_links.split() + moved))
        exports.append(f"export PIP_FIND_LINKS={shlex.quote(links)}")
    conf = Path(argv[0])
    _write_config(conf, sections)
    exports.insert(0, f"export PIP_CONFIG_FILE={shlex.quote(str(conf))}")
    folders = ", ".join(dict.fromkeys(moved))
    exports.append(f"echo {shlex.quote(f'setup: on-disk index mirrors read as flat wheel folders (find-links): {folders}')}")
    print("\n".join(exports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
