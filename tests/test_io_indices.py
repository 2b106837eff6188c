"""io/indices.py: packed sparse indices in a file (schema version 3), version-2 files with
plain index buffers, corrupt packed indices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from io_fixtures import Net, compressed, raw_header  # tests/ is on sys.path (pytest rootdir conftest)
from lowrank_sparse.io import file_report, load, read_metadata, save


@pytest.mark.parametrize("kinds", [("channel", "unstructured"), ("row", "2:4")], ids="-".join)
def test_version2_file_with_plain_indices_still_loads(kinds: tuple[str, str], tmp_path: Path,
                                                      tgen: torch.Generator) -> None:
    """A file in the version-2 layout (index buffers stored as they are in the state dict),
    written here by hand from its documented schema."""
    from safetensors.torch import save_file

    net = compressed(tgen, *kinds)
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    layers = {"features.3": net.features[3].config(), "fc": net.fc.config()}
    meta = {"format": "lowrank_sparse", "schema_version": "2", "arch": "null", "layers": json.dumps(layers),
            "dtypes": "{}", "user": "{}"}  # fmt: skip
    f = tmp_path / "v2.safetensors"
    save_file(state, str(f), metadata=meta)
    assert read_metadata(f)["schema_version"] == 2
    back = load(f, model=Net())
    x = torch.randn(2, 3, 8, 8, generator=tgen)
    with torch.no_grad():
        assert torch.equal(back(x), net(x))
    # the same model saved now (version 3) is smaller: packed indices
    f3 = tmp_path / "v3.safetensors"
    save(net, f3)
    assert file_report(f3)["indices"] < file_report(f)["indices"]
    # packed indices in a version-2 file are rejected
    header = raw_header(f3)
    bad = tmp_path / "v2packed.safetensors"
    from safetensors.torch import load_file

    save_file(load_file(str(f3)), str(bad), metadata={**header["__metadata__"], "schema_version": "2"})
    with pytest.raises(ValueError, match=r"v2packed\.safetensors.*packed sparse indices in a schema-version-2"):
        load(bad, model=Net())


@pytest.mark.parametrize("kinds", [("channel", "unstructured"), ("row", "2:4")], ids="-".join)
def test_packed_indices_in_file(kinds: tuple[str, str], tmp_path: Path, tgen: torch.Generator) -> None:
    net = compressed(tgen, *kinds)
    f = tmp_path / "m.safetensors"
    save(net, f)
    header = raw_header(f)
    # no plain index buffer in the file, only uint8 packed tensors under the sparse parts
    for part in ("features.3.sparse", "fc.sparse"):
        names = [k for k in header if k.startswith(part + ".") and not k.endswith(".values")]
        assert names and all(header[k]["dtype"] == "U8" for k in names), names
        mod = net.get_submodule(part)
        assert sum(header[k]["data_offsets"][1] - header[k]["data_offsets"][0] for k in names) == mod.num_index_bytes(packed=True)
        assert not any(k.split(".")[-1] in mod.index_names for k in names)
    info = read_metadata(f)
    assert set(info["sparse_indices"]) == {"features.3.sparse", "fc.sparse"}


def test_corrupt_packed_indices_in_file(tmp_path: Path, tgen: torch.Generator) -> None:
    from safetensors.torch import load_file, save_file

    net = compressed(tgen, "row", "unstructured")
    f = tmp_path / "m.safetensors"
    save(net, f)
    tensors, meta = load_file(str(f)), raw_header(f)["__metadata__"]
    key = next(k for k in tensors if k.startswith("fc.sparse.support."))
    short = {**tensors, key: tensors[key][:-1].clone()}
    meta2 = {k: v for k, v in meta.items() if k != "checksum"}  # checksum absent: the parts are still checked
    bad = tmp_path / "short.safetensors"
    save_file(short, str(bad), metadata=meta2)
    with pytest.raises(ValueError, match=r"short\.safetensors.*cannot decode the packed indices of 'fc\.sparse'"):
        load(bad, model=Net())
    missing = {k: v for k, v in tensors.items() if k != key}
    bad = tmp_path / "missing.safetensors"
    save_file(missing, str(bad), metadata=meta2)
    with pytest.raises(ValueError, match=rf"missing\.safetensors.*missing packed index tensor '{key}'"):
        load(bad, model=Net())
    si = json.loads(meta["sparse_indices"])
    si["features.3.sparse"].pop("tensors")
    bad = tmp_path / "meta.safetensors"
    save_file(tensors, str(bad), metadata={**meta2, "sparse_indices": json.dumps(si)})
    with pytest.raises(ValueError, match=r"meta\.safetensors.*sparse_indices entry 'features\.3\.sparse'"):
        load(bad, model=Net())
