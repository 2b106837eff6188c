"""Bad files for lowrank_sparse.load / io.read_metadata / io.file_report, fuzzed.

Every damaged file (truncated anywhere, a flipped bit anywhere, a header claiming
more than the file holds or terabytes, a wrong schema version, another library's
safetensors file, a pickle, an empty file, a path that is no file) must be refused
with a ValueError (FileNotFoundError for a path that is no file) whose message names
the file and what is wrong, in well under a second, without allocating much more than
the file's size and without ever unpickling anything.  A bit flip that leaves the file
loadable must give back the very same model (the checksum and the header checks
leave no silent corruption).
"""

from __future__ import annotations

import copy
import json
import pickle
import re
import struct
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import lowrank_sparse as lrs
from lowrank_sparse import io as lio
from lowrank_sparse.nn import LowRankSparseLinear

#: Fuzz settings: derandomized (the same examples on every run, so CI is stable),
#: sized so that each test takes a few seconds on two shared cores.
FUZZ = settings(max_examples=60, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
#: Words one of which a refusal's message must contain (besides the file's path).
_WHAT = re.compile(r"safetensors|truncated|corrupt|checksum|schema version|lowrank_sparse|metadata|"
                   r"header|no such file|does not fit|tensor", re.I)  # fmt: skip
#: Allowed peak of traced allocations: a few times the file, plus a small constant.
_MEM_FACTOR, _MEM_CONST = 4, 512 << 10
_SECONDS = 1.0


@dataclass
class Saved:
    """A small saved model: its file's bytes, the skeleton to load it into, a probe
    input and the original output on it."""

    blob: bytes
    skeleton: nn.Module
    x: torch.Tensor
    y: torch.Tensor

    @property
    def header_len(self) -> int:
        return struct.unpack("<Q", self.blob[:8])[0]

    def header(self) -> dict:
        return json.loads(self.blob[8 : 8 + self.header_len])

    def data(self) -> bytes:
        return self.blob[8 + self.header_len :]


def _tiny_model() -> tuple[nn.Module, nn.Module]:
    """(skeleton, compressed copy): Linear(12, 16) / ReLU / Linear(16, 8), both linears
    replaced by L + S pairs fitted by decompose (unstructured and row-sparse S)."""
    torch.manual_seed(0)
    skeleton = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8)).eval()
    model = copy.deepcopy(skeleton)
    for i, structure in ((0, "unstructured"), (2, "row")):
        lin = model[i]
        dec = lrs.decompose(lin.weight.detach(), rank=2, density=0.2, structure=structure, max_iter=20)
        model[i] = LowRankSparseLinear.from_decomposition(dec, bias=lin.bias.detach())
    return skeleton, model.eval()


def _frame(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz_io")


@pytest.fixture(scope="module")
def saved(workdir: Path) -> dict[str, Saved]:
    """The tiny model saved as stored (float32) and with ``dtype="float16"`` (which
    records the original dtypes in the metadata)."""
    skeleton, model = _tiny_model()
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(1))
    out = {}
    for tag, dtype in (("f32", None), ("f16", "float16")):
        path = workdir / f"good-{tag}.safetensors"
        lrs.save(model, path, dtype=dtype)
        with torch.no_grad():
            y = lrs.load(path, model=skeleton)(x)
        out[tag] = Saved(path.read_bytes(), skeleton, x, y)
    return out


# ----------------------------------------------------------------------------- guards


class _NoCode:
    """Replaces every unpickling entry point by a recorder that refuses."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        for owner, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                            (torch, "load"), (torch.serialization, "load")):  # fmt: skip
            monkeypatch.setattr(owner, name, self._refuse(f"{owner.__name__}.{name}"))

    def _refuse(self, what: str) -> Callable[..., None]:
        def refuse(*args: object, **kwargs: object) -> None:
            self.calls.append(what)
            raise AssertionError(f"loading a file called {what}")

        return refuse


@pytest.fixture
def no_code(monkeypatch: pytest.MonkeyPatch) -> _NoCode:
    return _NoCode(monkeypatch)


def _readers(saved: Saved) -> dict[str, Callable[[Path], object]]:
    return {
        "load": lambda p: lrs.load(p, model=saved.skeleton),
        "read_metadata": lio.read_metadata,
        "file_report": lio.file_report,
    }


def _measured(fn: Callable[[], object]) -> tuple[object, BaseException | None, float, int]:
    """(result, exception, seconds, peak traced bytes) of fn()."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        result, exc = fn(), None
    except Exception as e:  # noqa: BLE001 - classified by the caller
        result, exc = None, e
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, exc, seconds, peak


def _check_one(name: str, fn: Callable[[Path], object], path: Path, size: int, guard: _NoCode,
               must_fail: bool) -> object:  # fmt: skip
    """Run one reader on ``path``: fast, small, no unpickling, and either a result or a
    named refusal (ValueError / FileNotFoundError naming the file and the problem)."""
    result, exc, seconds, peak = _measured(lambda: fn(path))
    assert not guard.calls, f"{name} unpickled: {guard.calls}"
    assert seconds < _SECONDS, f"{name} took {seconds:.2f} s"
    assert peak < _MEM_FACTOR * size + _MEM_CONST, f"{name} allocated {peak} bytes for a {size}-byte file"
    if exc is None:
        assert not must_fail, f"{name} accepted a damaged file"
        return result
    assert isinstance(exc, (ValueError, FileNotFoundError)), f"{name} raised {type(exc).__name__}: {exc}"
    msg = str(exc)
    assert str(path) in msg and _WHAT.search(msg), f"{name}: unhelpful message {msg!r}"
    return exc


def _check_file(blob: bytes, saved: Saved, path: Path, guard: _NoCode, *, must_fail: bool) -> dict:
    path.write_bytes(blob)
    return {name: _check_one(name, fn, path, len(blob), guard, must_fail) for name, fn in _readers(saved).items()}


def _same_model(model: object, saved: Saved) -> None:
    assert isinstance(model, nn.Module)
    with torch.no_grad():
        assert torch.equal(model(saved.x), saved.y), "a damaged file loaded as a different model"


# ----------------------------------------------------------------------------- the good file


def test_valid_file_loads_without_unpickling_in_small_memory(saved, workdir, no_code) -> None:
    for tag, s in saved.items():
        out = _check_file(s.blob, s, workdir / f"valid-{tag}.safetensors", no_code, must_fail=False)
        _same_model(out["load"], s)
        assert out["read_metadata"]["schema_version"] == lio.SCHEMA_VERSION
        assert out["file_report"]["total"] == len(s.blob)


# ----------------------------------------------------------------------------- truncation


@pytest.mark.parametrize("where", ["length", "header", "data"])
@FUZZ
@given(frac=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_anywhere(where: str, frac: float, saved, workdir, no_code) -> None:
    s = saved["f32"]
    lo, hi = {"length": (0, 8), "header": (8, 8 + s.header_len), "data": (8 + s.header_len, len(s.blob))}[where]
    cut = lo + int(frac * (hi - lo))
    _check_file(s.blob[:cut], s, workdir / "cut.safetensors", no_code, must_fail=True)


def test_truncated_at_each_boundary(saved, workdir, no_code) -> None:
    s = saved["f16"]
    n = s.header_len
    for cut in (0, 1, 7, 8, 9, 8 + n - 1, 8 + n, 8 + n + 1, len(s.blob) - 1):
        _check_file(s.blob[:cut], s, workdir / "cut.safetensors", no_code, must_fail=True)


# ----------------------------------------------------------------------------- bit flips


def _flipped(blob: bytes, bit: int) -> bytes:
    b = bytearray(blob)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


@FUZZ
@given(data=st.data())
def test_bit_flip_anywhere_is_refused_or_harmless(data, saved, workdir, no_code) -> None:
    s = saved["f32"]
    bit = data.draw(st.integers(0, 8 * len(s.blob) - 1), label="bit")
    in_data = bit // 8 >= 8 + s.header_len
    out = _check_file(_flipped(s.blob, bit), s, workdir / "flip.safetensors", no_code, must_fail=False)
    if bit // 8 < 8 or in_data:  # length prefix: unreadable; data: the checksum catches it
        assert isinstance(out["load"], ValueError)
    if not isinstance(out["load"], BaseException):
        _same_model(out["load"], s)


@FUZZ
@given(data=st.data())
def test_bit_flip_in_the_data_of_a_cast_file(data, saved, workdir, no_code) -> None:
    s = saved["f16"]
    start = 8 + s.header_len
    bit = data.draw(st.integers(8 * start, 8 * len(s.blob) - 1), label="bit")
    out = _check_file(_flipped(s.blob, bit), s, workdir / "flip16.safetensors", no_code, must_fail=False)
    assert isinstance(out["load"], ValueError) and "checksum" in str(out["load"])


def test_bit_flip_in_the_recorded_dtypes(saved, workdir, no_code) -> None:
    """Every flipped bit of a recorded original dtype ('float32' -> 'float33', ...) is
    refused by name or loads the same model (never AttributeError / TypeError)."""
    s = saved["f16"]
    meta_at = s.blob.index(b'"dtypes"', 8)
    value_at = s.blob.index(b"float32", meta_at)
    for bit in range(8 * value_at, 8 * (value_at + len("float32"))):
        out = _check_file(_flipped(s.blob, bit), s, workdir / "flipdt.safetensors", no_code, must_fail=False)
        if not isinstance(out["load"], BaseException):
            _same_model(out["load"], s)


# ----------------------------------------------------------------------------- headers that lie


def test_header_length_beyond_the_file(saved, workdir, no_code) -> None:
    s = saved["f32"]
    for n in (s.header_len + 1, len(s.blob), 10**8, 2**40, 2**63, 2**64 - 1):
        blob = struct.pack("<Q", n) + s.blob[8:]
        out = _check_file(blob, s, workdir / "len.safetensors", no_code, must_fail=True)
        assert "header" in str(out["read_metadata"])


@FUZZ
@given(data=st.data())
def test_entry_claiming_more_than_the_file(data, saved, workdir, no_code) -> None:
    s = saved["f32"]
    header = s.header()
    names = sorted(k for k in header if k != "__metadata__")
    name = data.draw(st.sampled_from(names), label="tensor")
    entry = header[name]
    lo, hi = entry["data_offsets"]
    how = data.draw(st.sampled_from(["end", "shape", "terabytes"]), label="how")
    if how == "end":  # range runs past the data section
        entry["data_offsets"] = [lo, hi + data.draw(st.integers(1, 10**12), label="extra")]
    elif how == "shape":  # shape needs more bytes than the range holds
        entry["shape"] = [int(d) + data.draw(st.integers(1, 10**6), label="grow") for d in entry["shape"]] or [2]
    else:  # terabytes: shape and range both huge
        entry["shape"] = [10**6, 10**6]
        entry["dtype"] = "F32"
        entry["data_offsets"] = [0, 4 * 10**12]
    out = _check_file(_frame(header, s.data()), s, workdir / "claims.safetensors", no_code, must_fail=True)
    assert name in str(out["read_metadata"]) or "covers" in str(out["read_metadata"])


def test_only_terabyte_tensor(saved, workdir, no_code) -> None:
    """A header that is all claim: one (10^6, 10^6) float32 tensor, no data."""
    s = saved["f32"]
    header = {"__metadata__": s.header()["__metadata__"],
              "w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}  # fmt: skip
    _check_file(_frame(header, b""), s, workdir / "tb.safetensors", no_code, must_fail=True)


@pytest.mark.parametrize("kind", ["negative-shape", "overlapping"])
def test_inconsistent_entries_are_refused_by_the_header_readers(kind, saved, workdir, no_code) -> None:
    """A negative shape with reversed offsets, or a second entry over the bytes of an
    existing one, is refused by every reader (the byte ranges must tile the data)."""
    s = saved["f32"]
    header = s.header()
    first = sorted(k for k in header if k != "__metadata__")[0]
    if kind == "negative-shape":
        header["zz.extra"] = {"dtype": "F32", "shape": [-1, 4], "data_offsets": [16, 0]}
    else:
        header["zz.copy"] = dict(header[first])
    _check_file(_frame(header, s.data()), s, workdir / "entries.safetensors", no_code, must_fail=True)


# ----------------------------------------------------------------------------- versions, other files


@pytest.mark.parametrize("version", ["4", "99", "0", "-1", "3.0", "", "three", "99999999999999999999", "\u0663"])
def test_wrong_or_future_schema_version(version: str, saved, workdir, no_code) -> None:
    s = saved["f32"]
    header = s.header()
    header["__metadata__"]["schema_version"] = version
    out = _check_file(_frame(header, s.data()), s, workdir / "ver.safetensors", no_code, must_fail=True)
    for exc in out.values():
        assert "schema version" in str(exc) and repr(version) in str(exc)


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}, {"format": "lowrank_sparse"}])
def test_plain_safetensors_file_of_another_library(metadata, saved, workdir, no_code) -> None:
    from safetensors.torch import save_file

    path = workdir / "plain.safetensors"
    save_file(nn.Linear(3, 2).state_dict(), str(path), metadata=metadata)
    out = _check_file(path.read_bytes(), saved["f32"], path, no_code, must_fail=True)
    assert all("lowrank_sparse" in str(e) or "schema version" in str(e) for e in out.values())


def test_pickle_file_is_refused_without_unpickling(saved, workdir, no_code) -> None:
    path = workdir / "model.pt"
    import io as _io

    buf = _io.BytesIO()
    pickle.dump({"weight": [1.0, 2.0]}, buf)  # an ordinary pickle stream, saved as a model
    _check_file(buf.getvalue(), saved["f32"], path, no_code, must_fail=True)


@pytest.mark.parametrize("blob", [b"", b"\x00", b"\x00" * 8, struct.pack("<Q", 0), struct.pack("<Q", 2) + b"{}",
                                  struct.pack("<Q", 5) + b"[1,2]", struct.pack("<Q", 4) + b"\xff\xfe\x00\x01"],
                         ids=["empty", "one-byte", "zero-length-8", "zero-header", "empty-json", "json-list",
                              "not-utf8"])  # fmt: skip
def test_empty_and_junk_files(blob: bytes, saved, workdir, no_code) -> None:
    _check_file(blob, saved["f32"], workdir / "junk.safetensors", no_code, must_fail=True)


@pytest.mark.parametrize("kind", ["missing", "directory", "device"])
def test_path_that_is_no_file(kind: str, saved, workdir, no_code) -> None:
    path = {"missing": workdir / "does-not-exist.safetensors", "directory": workdir,
            "device": Path("/dev/null")}[kind]  # fmt: skip
    for name, fn in _readers(saved["f32"]).items():
        exc = _check_one(name, fn, path, 0, no_code, must_fail=True)
        assert isinstance(exc, FileNotFoundError)


# ----------------------------------------------------------------------------- badly typed fields


def _edited(saved: Saved, edit: Callable[[dict], None]) -> bytes:
    header = saved.header()
    edit(header)
    return _frame(header, saved.data())


def _set_meta(key: str, value: object) -> Callable[[dict], None]:
    return lambda h: h["__metadata__"].__setitem__(key, value)


def _first_entry(edit: Callable[[dict], None]) -> Callable[[dict], None]:
    return lambda h: edit(h[sorted(k for k in h if k != "__metadata__")[0]])


#: Header edits that give a field the wrong JSON type (each once raised AttributeError /
#: TypeError from a reader, or was accepted by read_metadata and file_report).
_BAD_TYPES = {
    "metadata-is-a-list": lambda h: h.__setitem__("__metadata__", [1, 2]),
    "arch-is-a-number": _set_meta("arch", 5),
    "layers-is-a-json-list": _set_meta("layers", "[1, 2]"),
    "dtypes-is-a-json-list": _set_meta("dtypes", "[1]"),
    "offsets-are-strings": _first_entry(lambda e: e.__setitem__("data_offsets", ["a", "b"])),
}


@pytest.mark.parametrize("kind", sorted(_BAD_TYPES))
def test_malformed_metadata_types(kind: str, saved, workdir, no_code) -> None:
    s = saved["f32"]
    _check_file(_edited(s, _BAD_TYPES[kind]), s, workdir / f"{kind}.safetensors", no_code, must_fail=True)


def test_deeply_nested_header(saved, workdir, no_code) -> None:
    """A header nested 10^5 levels deep is refused by name (never RecursionError)."""
    raw = b"[" * 100_000 + b"]" * 100_000
    _check_file(struct.pack("<Q", len(raw)) + raw, saved["f32"], workdir / "deep.safetensors", no_code, must_fail=True)


def test_the_unpickling_guard_catches_torch_load(workdir, no_code) -> None:
    """The guard itself: torch.load / pickle.loads are refused and recorded."""
    with pytest.raises(AssertionError):
        torch.load(workdir / "anything.pt")
    with pytest.raises(AssertionError):
        pickle.loads(b"\x80\x04K\x01.")
    assert no_code.calls == ["torch.load", "pickle.loads"]


# ----------------------------------------------------------------------------- arbitrary JSON in any field

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every place inside a JSON value (as a key path), the value itself included."""
    out = [prefix]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for k, v in items:
        out += _paths(v, (*prefix, k))
    return out


def _replaced(value: object, path: tuple, new: object) -> object:
    if not path:
        return new
    value = copy.deepcopy(value)
    inner = value
    for k in path[:-1]:
        inner = inner[k]
    inner[path[-1]] = new
    return value


@FUZZ
@given(data=st.data())
def test_any_field_replaced_by_arbitrary_json(data, saved, workdir, no_code) -> None:
    """Any value anywhere in the header, the JSON inside the metadata strings included,
    replaced by arbitrary JSON: a named refusal, or the very same model."""
    s = saved[data.draw(st.sampled_from(["f32", "f16"]), label="file")]
    header = s.header()
    meta = header["__metadata__"]
    key = data.draw(st.sampled_from(sorted(header) + sorted(f"meta:{k}" for k in meta)), label="key")
    new = data.draw(_JSON, label="new")
    if key.startswith("meta:"):
        k = key[5:]
        try:
            inner = json.loads(meta[k])
        except ValueError:  # the checksum: a plain string
            inner = meta[k]
        where = data.draw(st.sampled_from(_paths(inner)), label="where")
        meta[k] = json.dumps(_replaced(inner, where, new)) if where or data.draw(st.booleans()) else new
    else:
        where = data.draw(st.sampled_from(_paths(header[key])), label="where")
        header[key] = _replaced(header[key], where, new)
    out = _check_file(_frame(header, s.data()), s, workdir / "json.safetensors", no_code, must_fail=False)
    if not isinstance(out["load"], BaseException):
        _same_model(out["load"], s)
