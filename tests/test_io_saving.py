"""io/saving.py: save() validation, casts, compact file size, and the bytes of saved files
pinned against tests/data/io_reference.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from io_fixtures import Net, compressed, file_fingerprint, reference_models  # tests/ is on sys.path
from lowrank_sparse.io import file_report, load, save
from lowrank_sparse.nn import LowRankSparseLinear
from sparse_fixtures import random_decomposition


def test_save_validation(tmp_path: Path, tgen: torch.Generator) -> None:
    net = compressed(tgen)
    with pytest.raises(ValueError, match="dtype"):
        save(net, tmp_path / "x.safetensors", dtype="int8")
    with pytest.raises(ValueError, match="JSON"):
        save(net, tmp_path / "x.safetensors", metadata={"obj": object()})
    with pytest.raises(TypeError, match="nn.Module"):
        save("net", tmp_path / "x.safetensors")  # type: ignore[arg-type]


def test_bfloat16_and_tied_weights(tmp_path: Path, tgen: torch.Generator) -> None:
    emb = nn.Linear(4, 4, bias=False)
    net = nn.Sequential(emb, nn.ReLU(), nn.Linear(4, 4, bias=False))
    net[2].weight = emb.weight  # shared storage
    f = tmp_path / "t.safetensors"
    save(net, f, dtype=torch.bfloat16)
    skel = nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 4, bias=False))
    back = load(f, model=skel)
    torch.testing.assert_close(back[2].weight, emb.weight.detach().bfloat16().float(), rtol=0, atol=0)
    assert skel[0].weight.data_ptr() != back[0].weight.data_ptr()  # the skeleton is untouched


def test_file_size_reflects_compression(tmp_path: Path, tgen: torch.Generator) -> None:
    dec = random_decomposition(512, 512, 16, "unstructured", tgen)
    mod = LowRankSparseLinear.from_decomposition(dec, bias=torch.zeros(512))
    f = tmp_path / "l.safetensors"
    save(mod, f)
    expected = mod.num_params() * 4 + mod.sparse.num_index_bytes(packed=True)
    assert expected < 0.3 * 512 * 512 * 4  # far below the dense layer (1 MiB)
    assert abs(f.stat().st_size - expected) <= 0.05 * expected
    # the indices are stored packed: near the entropy of the support (p = 0.1: 0.47 bits per
    # entry) + 10 bits of row count per row, far below int32 CSR (crow + one int32 per value)
    nnz, p = int(torch.count_nonzero(dec.S)), 0.1
    entropy = 512 * 512 * -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) / 8
    assert file_report(f)["indices"] == mod.sparse.num_index_bytes(packed=True) <= 1.1 * entropy + 512 * 10 / 8
    assert mod.sparse.num_index_bytes(packed=True) < 0.25 * (4 * nnz + 4 * 513)
    f16 = tmp_path / "h.safetensors"
    save(mod, f16, dtype="float16")
    expected16 = mod.num_params() * 2 + mod.sparse.num_index_bytes(packed=True)
    assert abs(f16.stat().st_size - expected16) <= 0.05 * expected16
    back = load(f16, model=nn.Linear(512, 512))
    assert back.U.dtype == torch.float32
    torch.testing.assert_close(back.U, mod.U.detach().half().float(), rtol=0, atol=0)


REFERENCE = json.loads((Path(__file__).parent / "data" / "io_reference.json").read_text())


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_saved_bytes_are_pinned(name: str, tmp_path: Path) -> None:
    """Every sparse format and index code, casts and AQ parts save to the same bytes as
    the reference (header length, header JSON, data section)."""
    model, kwargs = reference_models()[name]
    f = tmp_path / f"{name}.safetensors"
    save(model, f, **kwargs)
    assert file_fingerprint(f) == REFERENCE[name]


# ----------------------------------------------------------------------------- atomic, deterministic writes


def _no_temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_error_midway_leaves_the_old_file_and_no_temp_file(tmp_path: Path, tgen: torch.Generator,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from lowrank_sparse.io import container

    f = tmp_path / "m.safetensors"
    save(compressed(tgen), f)
    old = f.read_bytes()
    real, calls = container.write_tensor, []

    def failing(fh, t):  # writes two tensors, then half of the third, then fails
        calls.append(fh.tell())
        if len(calls) == 3:
            fh.write(b"\0" * 7)
            raise OSError("disk full")
        real(fh, t)

    monkeypatch.setattr(container, "write_tensor", failing)
    other = compressed(torch.Generator().manual_seed(99), "row", "2:4")
    with pytest.raises(OSError, match="disk full"):
        save(other, f)
    assert len(calls) == 3 and calls[2] > 0
    assert f.read_bytes() == old and _no_temp_files(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):  # not only Exceptions: an interrupt too
        monkeypatch.setattr(container, "write_tensor", lambda fh, t: (_ for _ in ()).throw(KeyboardInterrupt()))
        save(other, tmp_path / "new.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


_SLOW_CHILD = r"""
import sys, time
import torch
from lowrank_sparse.io import container, save

real = container.write_tensor
def slow(f, t):
    real(f, t)
    f.flush()
    print("wrote", flush=True)
    time.sleep(60)
container.write_tensor = slow
save(torch.nn.Linear(512, 256), sys.argv[1])
"""


def test_kill_midway_leaves_the_old_file(tmp_path: Path, tgen: torch.Generator) -> None:
    """SIGKILL of a process in the middle of a save: the old file is intact (the partial
    bytes are in a temporary file next to it, never at the target)."""
    import os
    import signal
    import subprocess
    import sys

    f = tmp_path / "m.safetensors"
    save(compressed(tgen), f)
    old = f.read_bytes()
    with subprocess.Popen([sys.executable, "-c", _SLOW_CHILD, str(f)], stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout.readline().strip() == "wrote"
            temps = _no_temp_files(tmp_path)
            assert len(temps) == 1 and (tmp_path / temps[0]).stat().st_size > 0
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert f.read_bytes() == old
    assert load(f, model=Net()) is not None


def test_same_model_saves_to_the_same_bytes(tmp_path: Path) -> None:
    """Same inputs and seed -> byte-identical files (safetensors' own writer put the
    metadata keys in a different order every time)."""
    paths = []
    for i in range(3):
        model, kwargs = reference_models()["cnn_aq_f16"]  # rebuilt from the seed each time
        paths.append(tmp_path / f"{i}.safetensors")
        save(model, paths[-1], metadata={"note": "x", "b": 1, "a": [1, 2]}, **kwargs)
    assert paths[0].read_bytes() == paths[1].read_bytes() == paths[2].read_bytes()
    model, _ = reference_models()["cnn"]
    save(model, paths[0], dtype="float16")
    save(model, paths[1], dtype="float16")
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_overwrite_keeps_mode_and_follows_links(tmp_path: Path, tgen: torch.Generator) -> None:
    import os
    import stat

    f = tmp_path / "m.safetensors"
    save(compressed(tgen), f)
    os.chmod(f, 0o640)
    link = tmp_path / "link.safetensors"
    link.symlink_to(f)
    net = compressed(tgen, "row", "2:4")
    save(net, link)
    assert link.is_symlink() and stat.S_IMODE(f.stat().st_mode) == 0o640
    x = torch.randn(2, 3, 8, 8, generator=tgen)
    with torch.no_grad():
        assert torch.equal(load(f, model=Net())(x), net(x))
    with pytest.raises(OSError):  # a folder at the target: refused, the folder stays
        save(net, tmp_path)
    assert _no_temp_files(tmp_path) == [] and tmp_path.is_dir()


def test_same_bytes_in_another_process(tmp_path: Path) -> None:
    """Also across processes with other string hashing (no set or hash order leaks in)."""
    import os
    import subprocess
    import sys

    here = tmp_path / "here.safetensors"
    model, kwargs = reference_models()["cnn_aq_f32"]
    save(model, here, **kwargs)
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from io_fixtures import reference_models; "
            "from lowrank_sparse.io import save; m, kw = reference_models()['cnn_aq_f32']; save(m, sys.argv[1], **kw)")
    there = tmp_path / "there.safetensors"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    args = [sys.executable, "-c", code, str(there), str(Path(__file__).parent)]
    subprocess.run(args, env=env, check=True, timeout=120)
    assert here.read_bytes() == there.read_bytes()
