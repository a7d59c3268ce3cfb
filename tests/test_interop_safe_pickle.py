"""The safe unpickler of mpnn-import: data comes back, code in the file never runs, unsafe files are refused."""

from __future__ import annotations

import collections
import os
import pickle
import zipfile

import pytest
import torch

from mpnn_ip.interop.errors import UnsafeFileError, UnsupportedModelError
from mpnn_ip.interop.importer import read_source
from mpnn_ip.interop.records import irreps_of, plain
from mpnn_ip.interop.safe_pickle import Record, SafeArchive, load_torch_file, module_children, module_tensors


class _RunsShell:
    """Pickles as a call of os.system (what a malicious model file does)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _RunsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').system('true')",))


class _ActiveSetState:
    """A class whose own __setstate__ would run code; as a record it must never be called."""

    ran = False

    def __setstate__(self, state):
        _ActiveSetState.ran = True


class _SubclassCall:
    """Reconstructed by calling a class with arguments (REDUCE), not a data-only NEWOBJ."""

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return (_SubclassCall, (self.value,))


def test_tensors_parameters_and_containers_come_back_exactly(tmp_path):
    data = {
        "tensor": torch.randn(3, 4, dtype=torch.float64),
        "view": torch.arange(10.0)[2:8:2],
        "parameter": torch.nn.Parameter(torch.randn(2, 2)),
        "ints": torch.tensor([1, 2, 3]),
        "flags": torch.tensor([True, False]),
        "ordered": collections.OrderedDict(a=1, b=[1.5, "x", None]),
        "set": {1, 2},
        "dtype": torch.float32,
        "size": torch.Size([2, 3]),
    }
    torch.save(data, tmp_path / "data.pt")
    loaded = load_torch_file(tmp_path / "data.pt")
    for key in ("tensor", "view", "ints", "flags"):
        assert torch.equal(loaded[key], data[key]) and loaded[key].dtype == data[key].dtype
    assert isinstance(loaded["parameter"], torch.nn.Parameter) and torch.equal(loaded["parameter"], data["parameter"])
    assert loaded["ordered"] == data["ordered"] and isinstance(loaded["ordered"], collections.OrderedDict)
    assert loaded["set"] == {1, 2} and loaded["dtype"] is torch.float32 and loaded["size"] == torch.Size([2, 3])


def test_a_pickled_module_becomes_an_inert_record_with_its_tensors(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.SiLU(), torch.nn.Linear(4, 1))
    module.register_buffer("scale", torch.tensor(2.5))
    torch.save(module, tmp_path / "module.pt")
    record = load_torch_file(tmp_path / "module.pt")
    assert isinstance(record, Record) and record.qualname == "torch.nn.modules.container.Sequential"
    assert not isinstance(record, torch.nn.Module)
    assert [child.class_name for child in module_children(record).values()] == ["Linear", "SiLU", "Linear"]
    tensors = module_tensors(record)
    assert sorted(tensors) == sorted(module.state_dict())
    for name, value in module.state_dict().items():
        assert torch.equal(tensors[name], value)
    assert module_children(record)["0"].in_features == 3


def test_a_class_with_its_own_setstate_is_recorded_not_run(tmp_path):
    torch.save({"obj": _ActiveSetState()}, tmp_path / "obj.pt")
    loaded = load_torch_file(tmp_path / "obj.pt")
    assert isinstance(loaded["obj"], Record) and loaded["obj"].qualname.endswith("_ActiveSetState")
    assert not _ActiveSetState.ran


@pytest.mark.parametrize("payload", ["shell", "eval", "class_call"])
def test_a_pickle_that_would_call_code_is_refused_and_the_call_never_runs(tmp_path, payload):
    marker = tmp_path / "ran"
    obj = {"shell": _RunsShell(f"touch {marker}"), "eval": _RunsEval(), "class_call": _SubclassCall(3)}[payload]
    torch.save({"model": obj}, tmp_path / "evil.model")
    with pytest.raises(UnsafeFileError, match="not run") as info:
        load_torch_file(tmp_path / "evil.model")
    expected = {"shell": "system", "eval": "eval", "class_call": "_SubclassCall"}[payload]
    assert expected in str(info.value) and "evil.model" in str(info.value)
    assert not marker.exists()


def test_mpnn_import_refuses_a_malicious_file_writes_nothing_and_exits_2(tmp_path, capsys):
    from mpnn_ip.cli.import_model import main

    marker, out = tmp_path / "ran", tmp_path / "out.ckpt"
    torch.save(_RunsShell(f"touch {marker}"), tmp_path / "evil.model")
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "evil.model"), f"out={out}"])
    assert info.value.code == 2
    message = capsys.readouterr().err
    assert "system" in message and "not run" in message
    assert not marker.exists() and not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "evil.model"]


def test_torch_package_archives_are_read_without_importing_their_code(tmp_path):
    from torch.package import PackageExporter

    module = torch.nn.Linear(2, 3)
    with PackageExporter(tmp_path / "packaged.zip") as exporter:
        exporter.extern("torch.**")
        exporter.save_pickle("model", "model.pkl", module)
    archive = SafeArchive(tmp_path / "packaged.zip")
    member = next(name for name in archive.names if name.endswith("model/model.pkl"))
    record = archive.load_pickle(member)
    assert isinstance(record, Record) and record.class_name == "Linear"
    assert all(torch.equal(module_tensors(record)[k], v) for k, v in module.state_dict().items())


def test_pickled_e3nn_irreps_decode_to_irreps(tmp_path):
    from e3nn import o3

    irreps = o3.Irreps("8x0e+8x1o+4x2e")
    torch.save({"irreps": irreps, "irrep": o3.Irrep("1o")}, tmp_path / "irreps.pt")
    loaded = load_torch_file(tmp_path / "irreps.pt")
    assert irreps_of(loaded["irreps"]) == irreps and irreps_of(loaded["irrep"]) == o3.Irreps("1x1o")
    assert plain(loaded) == {"irreps": "8x0e+8x1o+4x2e", "irrep": "1x1o"}


def test_files_that_are_not_model_files_are_refused_with_what_they_are(tmp_path):
    (tmp_path / "text.model").write_text("not a model")
    with pytest.raises(UnsafeFileError, match="not a zip archive"):
        read_source(tmp_path / "text.model")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(UnsupportedModelError, match="not a model mpnn-import reads"):
        read_source(tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(UnsupportedModelError, match="neither a torch.save file nor a nequip-package"):
        read_source(tmp_path / "other.zip")
    with pytest.raises(UnsafeFileError, match="does not exist"):
        read_source(tmp_path / "missing.model")


def test_a_truncated_archive_is_an_error_naming_the_file(tmp_path):
    torch.save({"w": torch.randn(100)}, tmp_path / "whole.pt")
    with zipfile.ZipFile(tmp_path / "whole.pt") as source, zipfile.ZipFile(tmp_path / "cut.pt", "w") as cut:
        for name in source.namelist():
            if "/data/" not in name:
                cut.writestr(name, source.read(name))
    with pytest.raises(UnsafeFileError, match="cut.pt.*missing"):
        load_torch_file(tmp_path / "cut.pt")


def test_protocol_0_instantiation_of_an_unknown_class_is_refused(tmp_path):
    payload = b"(cos\nsystem\nS'true'\no."  # INST/OBJ form of a call
    with zipfile.ZipFile(tmp_path / "old.pt", "w") as archive:
        archive.writestr("old/data.pkl", payload)
    with pytest.raises(UnsafeFileError, match="system"):
        load_torch_file(tmp_path / "old.pt")
    assert pickle.loads(pickle.dumps(1)) == 1  # the real pickle module is untouched


def _pickle_in_zip(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
    return path


def test_a_torch_function_named_through_getattr_is_an_inert_record(tmp_path):
    payload = b"cbuiltins\ngetattr\n(ctorch._C\n_VariableFunctionsClass\nS'tanh'\ntR."
    record = load_torch_file(_pickle_in_zip(tmp_path / "tanh.pt", payload))
    assert isinstance(record, type) and issubclass(record, Record) and record.qualname == "torch.tanh"


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\ngetattr\n(cposix\nsystem\nS'__call__'\ntR.",
        b"cbuiltins\ngetattr\n(ctorch._C\n_VariableFunctionsClass\nS'__class__.__init__'\ntR.",
    ],
)
def test_getattr_on_anything_but_a_torch_function_namespace_is_refused(tmp_path, payload):
    with pytest.raises(UnsafeFileError, match="getattr"):
        load_torch_file(_pickle_in_zip(tmp_path / "evil.pt", payload))
