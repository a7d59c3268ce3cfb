"""Read pickled model files without running any code from them.

mace-torch ``.model`` files are whole pickled modules and NequIP packages carry their code; a
plain ``pickle.load`` of either would import the peers' packages and call whatever the file names.
This unpickler resolves only an allow-list of plain containers, torch dtypes/sizes and the
tensor rebuild functions (what ``torch.load(weights_only=True)`` allows, and no more). Every
other class becomes an inert :class:`Record` of the arguments and state the file gives it, so
a converter can read a module's attributes, submodules and tensors. A file whose pickle would
*call* anything else (``os.system``, ``eval``, a class constructor with arguments that is not
a known data-only reconstructor) is refused with :class:`UnsafeFileError` before the call, and
the call never runs.

Formats: ``torch.save`` zip files (``<root>/data.pkl`` with storages ``<root>/data/<key>``)
and ``torch.package`` zips (``.nequip.zip``: pickles anywhere, storages ``.data/<key>.storage``).
"""

from __future__ import annotations

import collections
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from mpnn_ip.interop.errors import UnsafeFileError
from mpnn_ip.interop.records import Record, module_children, module_tensors

__all__ = ["Record", "SafeArchive", "load_torch_file", "module_children", "module_tensors"]

_PACKAGE_PREFIX = re.compile(r"^<torch_package_\d+>\.")

#: Classes whose construction from arguments only stores data; a pickle may call them (the call
#: is recorded, never run): e3nn's irreps, paths, torch.fx graph modules (kept as their code text,
#: never compiled), Lightning/omegaconf containers, enums and small value types.
INERT_CALLS = frozenset(
    {
        "torch.fx.graph_module.reduce_graph_module",
        "torch.fx.graph_module.reduce_package_graph_module",
        "torch.fx.graph_module._make_graph_module",
        "pathlib.Path",
        "pathlib.PosixPath",
        "pathlib.PurePosixPath",
        "pathlib.WindowsPath",
        "pathlib.PureWindowsPath",
        "functools.partial",
        "datetime.datetime",
        "datetime.date",
        "datetime.timedelta",
        "uuid.UUID",
        "argparse.Namespace",
        "types.SimpleNamespace",
        "e3nn.o3._irreps.Irrep",
        "e3nn.o3._irreps.Irreps",
        "e3nn.o3._irreps._MulIr",
        "e3nn.o3._irreps.MulIr",
        "omegaconf.base.Metadata",
        "omegaconf.base.ContainerMetadata",
        "omegaconf.nodes.AnyNode",
        "omegaconf.nodes.StringNode",
        "omegaconf.nodes.IntegerNode",
        "omegaconf.nodes.FloatNode",
        "omegaconf.nodes.BooleanNode",
        "omegaconf.dictconfig.DictConfig",
        "omegaconf.listconfig.ListConfig",
        "typing.Any",
        "enum.Enum",
    }
)


class _RecordType(type):
    """Metaclass of the per-name record classes: calling one (pickle's REDUCE, INST, OBJ) is
    allowed only for :data:`INERT_CALLS`, and then only records its arguments."""

    def __call__(cls, *args, **kwargs):
        if cls.qualname not in INERT_CALLS:
            raise UnsafeFileError(
                f"{cls.source}: its pickle would call {cls.qualname}{_short(args)}, which is not on mpnn_ip's allow-list "
                "of data-only constructors. The call was not run and nothing was written. Only import model files you "
                "trust; if this is a genuine model file of a supported package, please report the name."
            )
        return cls.__new__(cls, *args, **kwargs)


def _short(args) -> str:
    text = repr(args)
    return text if len(text) <= 80 else text[:77] + "...)"


class _StorageType:
    """``torch.DoubleStorage`` and friends as a pickle names them: only their dtype is used."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


_STORAGE_TYPES = {
    f"{name}Storage": dtype
    for name, dtype in {
        "Double": torch.float64,
        "Float": torch.float32,
        "Half": torch.float16,
        "BFloat16": torch.bfloat16,
        "Long": torch.int64,
        "Int": torch.int32,
        "Short": torch.int16,
        "Char": torch.int8,
        "Byte": torch.uint8,
        "Bool": torch.bool,
        "ComplexDouble": torch.complex128,
        "ComplexFloat": torch.complex64,
    }.items()
}


def _encode(text, encoding="latin1"):
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (latin-1 text only)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeFileError(f"refused _codecs.encode with arguments of types {type(text).__name__}, {encoding!r}")
    return text.encode("latin1")


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter) or new_type not in (
        torch.Tensor,
        torch.nn.Parameter,
    ):
        raise UnsafeFileError(
            f"refused a tensor subclass rebuild ({new_type!r}); only plain tensors and parameters are read"
        )
    tensor = func(*args)
    return tensor if new_type is type(tensor) else tensor.as_subclass(new_type)


#: Namespaces of torch functions a pickle may name as ``getattr(namespace, "name")`` (e.g. ``torch.tanh``, an
#: activation stored in a module); the result is an inert record of ``torch.<name>``, never the function.
_FUNCTION_NAMESPACES = {"torch._C._VariableFunctionsClass": "torch", "torch._C._nn": "torch._C._nn", "torch": "torch"}


def _getattr(namespace, name):
    """``builtins.getattr`` as pickles of torch functions use it: only a torch function namespace and an
    identifier; returns an inert :class:`Record` naming the function."""
    qualname = (
        getattr(namespace, "qualname", None) if isinstance(namespace, type) and issubclass(namespace, Record) else None
    )
    if qualname not in _FUNCTION_NAMESPACES or not isinstance(name, str) or not name.isidentifier():
        raise UnsafeFileError(
            f"refused getattr({namespace!r}, {name!r}): only torch functions may be named this way; nothing was run"
        )
    function = f"{_FUNCTION_NAMESPACES[qualname]}.{name}"
    return _RecordType(name, (Record,), {"qualname": function, "source": "", "__module__": __name__})


def _numpy_globals() -> dict[tuple[str, str], Any]:
    import numpy

    out = {("numpy", "dtype"): numpy.dtype, ("numpy", "ndarray"): numpy.ndarray}
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(core, "scalar")] = numpy.core.multiarray.scalar if hasattr(numpy, "core") else None
        out[(core, "_reconstruct")] = _numpy_reconstruct
    return {key: value for key, value in out.items() if value is not None}


def _numpy_reconstruct(subtype, shape, dtype):
    import numpy

    if subtype is not numpy.ndarray:
        raise UnsafeFileError(f"refused a numpy array subclass ({subtype!r})")
    return numpy.ndarray.__new__(subtype, shape, dtype)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): _encode,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("torch", "Tensor"): torch.Tensor,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    }
    for builtins in ("builtins", "__builtin__"):
        allowed[(builtins, "getattr")] = _getattr
        for name, value in {
            "set": set,
            "frozenset": frozenset,
            "complex": complex,
            "slice": slice,
            "bytearray": bytearray,
        }.items():
            allowed[(builtins, name)] = value
    for name in dir(torch):
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype):
            allowed[("torch", name)] = value
    for name, dtype in _STORAGE_TYPES.items():
        allowed[("torch", name)] = _StorageType(dtype)
    allowed.update(_numpy_globals())
    return allowed


_ALLOWED = _allowed_globals()


class _SafeUnpickler(pickle.Unpickler):
    """Allow-listed globals, record classes for the rest, storages read from the archive."""

    def __init__(self, data: bytes, archive: SafeArchive, root: str | None):
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._root = root
        self._record_types: dict[str, type] = {}
        self._storages: dict[str, torch.storage.TypedStorage] = {}

    def find_class(self, module: str, name: str):
        module = _PACKAGE_PREFIX.sub("", module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        qualname = f"{module}.{name}"
        if qualname not in self._record_types:
            self._record_types[qualname] = _RecordType(
                name, (Record,), {"qualname": qualname, "source": str(self._archive.path), "__module__": __name__}
            )
        return self._record_types[qualname]

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid:
            raise UnsafeFileError(f"{self._archive.path}: unknown persistent id {pid!r} in its pickle")
        kind = pid[0]
        if kind == "storage":
            storage_type, key = pid[1], str(pid[2])  # then location and size: the archive's bytes are the truth
            dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else torch.uint8
            return self._storage(key, dtype)
        if kind == "reduce_package":  # torch.package: (func, *args) called with the importer
            func = pid[1]
            if isinstance(func, type) and issubclass(func, Record):
                return func(*pid[2:])  # refused unless an inert call
            raise UnsafeFileError(
                f"{self._archive.path}: its package pickle would call {func!r}; refused, nothing was run"
            )
        raise UnsafeFileError(f"{self._archive.path}: unknown persistent id kind {kind!r} in its pickle")

    def _storage(self, key: str, dtype: torch.dtype) -> torch.storage.TypedStorage:
        if key not in self._storages:
            raw = self._archive.storage_bytes(key, self._root)
            untyped = (
                torch.frombuffer(bytearray(raw), dtype=torch.uint8).untyped_storage()
                if raw
                else torch.UntypedStorage(0)
            )
            self._storages[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
        return self._storages[key]


class SafeArchive:
    """A zip written by ``torch.save`` or ``torch.package``, read without running its code.

    Args:
        path: the file.
    Raises:
        ConfigError (via :class:`UnsafeFileError`'s base) when the file is missing or not a zip.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise UnsafeFileError(f"model file {self.path} does not exist")
        if not zipfile.is_zipfile(self.path):
            raise UnsafeFileError(
                f"{self.path} is not a zip archive written by torch.save (>= 1.6) or torch.package; older pickle "
                "formats are not read (load and save it again with a current torch in the package's own environment)"
            )
        self._zip = zipfile.ZipFile(self.path)
        self.names = self._zip.namelist()
        byteorder = [n for n in self.names if n.endswith("/byteorder") or n == "byteorder"]
        if byteorder and self._zip.read(byteorder[0]).strip() not in (b"little", b""):
            raise UnsafeFileError(f"{self.path} stores big-endian tensors, which are not read")

    def read_bytes(self, name: str) -> bytes:
        """The bytes of member ``name``."""
        return self._zip.read(name)

    def storage_bytes(self, key: str, root: str | None) -> bytes:
        """Raw bytes of storage ``key``: ``<root>/data/<key>`` (torch.save) or ``<root>/.data/<key>.storage`` (torch.package)."""
        prefix = f"{root}/" if root else ""
        for name in (f"{prefix}data/{key}", f"{prefix}.data/{key}.storage"):
            if name in self.names:
                return self._zip.read(name)
        raise UnsafeFileError(f"{self.path}: tensor storage {key!r} is missing from the archive (truncated file?)")

    def load_pickle(self, name: str) -> Any:
        """Unpickle member ``name`` with the allow-list (see the module docstring)."""
        root = name.split("/", 1)[0] if "/" in name else None
        try:
            return _SafeUnpickler(self._zip.read(name), self, root).load()
        except UnsafeFileError:
            raise
        except Exception as exc:  # noqa: BLE001 - any malformed pickle is the same to the user
            raise UnsafeFileError(f"{self.path}: member {name} cannot be read ({type(exc).__name__}: {exc})") from exc

    def torch_save_pickle(self) -> str | None:
        """The ``<root>/data.pkl`` member of a ``torch.save`` file, or None."""
        found = [n for n in self.names if n.endswith("/data.pkl") and n.count("/") == 1]
        return found[0] if found else None


def load_torch_file(path: str | Path) -> Any:
    """The object a ``torch.save`` zip file holds: real tensors and containers, :class:`Record` for other classes.

    Raises:
        UnsafeFileError: not such a file, or a pickle that would call something off the allow-list.
    """
    archive = SafeArchive(path)
    member = archive.torch_save_pickle()
    if member is None:
        raise UnsafeFileError(f"{archive.path} is a zip archive but not a torch.save file (no <name>/data.pkl inside)")
    return archive.load_pickle(member)
