"""Import a peer's model file: pick the reader, convert, and write one of our checkpoints.

:func:`read_source` recognises the file (mace-torch ``.model``, NequIP 0.19 ``.ckpt`` training
checkpoint, ``nequip-package`` ``.nequip.zip``), reads it with the safe unpickler and hands it to
the converter of its package; :func:`import_model` returns our :class:`~mpnn_ip.models.Potential`;
:func:`write_imported_checkpoint` writes an ordinary ``weights_only`` checkpoint of ours, whose
``ckpt["mpnn_ip"]["source"]`` says where the model came from (file name, sha256, package and version,
the source's hyper-parameters, the head).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mpnn_ip.checkpoint import MODEL_PREFIX, checkpoint_metadata
from mpnn_ip.interop.errors import UnsupportedModelError
from mpnn_ip.interop.imported import ImportedModel
from mpnn_ip.interop.safe_pickle import Record, SafeArchive
from mpnn_ip.models import Potential

__all__ = ["import_model", "imported_checkpoint", "read_source", "sha256_of", "write_imported_checkpoint"]


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _mace(obj: Any, head: str | None) -> ImportedModel:
    from mpnn_ip.interop.mace import convert_mace

    return convert_mace(obj, head=head)


def _no_heads(package: str, head: str | None, path: Path) -> None:
    if head is not None:
        raise UnsupportedModelError(f"{path}: head={head!r} was given but {package} models have no heads; drop head=")


def read_source(path: str | Path, head: str | None = None) -> ImportedModel:
    """Read and convert a peer's model file (never running code from it).

    Args:
        path: a mace-torch ``.model`` file, a NequIP ``.ckpt`` training checkpoint or a ``.nequip.zip`` package.
        head: for multi-head MACE models, the head to import.
    Raises:
        UnsafeFileError: the file's pickle would call something off the allow-list (nothing ran).
        UnsupportedModelError: a file of no supported package, or an option we do not convert (named).
    """
    path = Path(path).expanduser()
    archive = SafeArchive(path)
    member = archive.torch_save_pickle()
    if member is None:
        from mpnn_ip.interop import nequip_package

        if nequip_package.looks_like_nequip_package(archive):
            _no_heads("NequIP", head, path)
            return nequip_package.convert_nequip_package(archive)
        raise UnsupportedModelError(
            f"{path} is a zip archive but neither a torch.save file nor a nequip-package file; mpnn-import reads "
            "mace-torch .model files, NequIP .ckpt training checkpoints and .nequip.zip packages"
        )
    obj = archive.load_pickle(member)
    if isinstance(obj, Record) and obj.qualname.startswith("mace.modules."):
        return _mace(obj, head)
    if isinstance(obj, dict):
        from mpnn_ip.interop import nequip_checkpoint as nequip

        if nequip.looks_like_nequip_checkpoint(obj):
            _no_heads("NequIP", head, path)
            return nequip.convert_nequip_checkpoint(obj, where=str(path))
        if "mpnn_ip" in obj:
            raise UnsupportedModelError(f"{path} is already an mpnn_ip checkpoint; use it directly")
    found = obj.qualname if isinstance(obj, Record) else type(obj).__name__
    raise UnsupportedModelError(
        f"{path} holds a {found}, not a model mpnn-import reads (mace-torch MACE/ScaleShiftMACE .model files, "
        "NequIP 0.19 .ckpt training checkpoints, .nequip.zip packages)"
    )


def provenance(path: str | Path, imported: ImportedModel, head: str | None) -> dict[str, Any]:
    """``ckpt["mpnn_ip"]["source"]``: where an imported model came from (plain python)."""
    path = Path(path).expanduser()
    return {
        "file_name": path.name,
        "sha256": sha256_of(path),
        "package": imported.package,
        "package_version": imported.package_version,
        "hyperparameters": imported.hyperparameters,
        "heads": list(imported.heads),
        "head": head,
    }


def imported_checkpoint(model: Potential, source: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint dict of an imported model: our metadata (with ``source``) and its weights."""
    statistics = {
        "species": list(model.species),
        "e0s": model.head_e0s(0),
        "e0s_source": f"imported from {source['package']}",
    }
    meta = checkpoint_metadata(model, statistics) | {"source": source}
    state = {MODEL_PREFIX + name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    return {"mpnn_ip": meta, "state_dict": state}


def import_model(path: str | Path, head: str | None = None) -> Potential:
    """Our :class:`~mpnn_ip.models.Potential` (float64, eval mode) computing the function of a peer's model file.

    The model carries ``model.checkpoint_metadata["source"]`` (see :func:`provenance`).
    """
    imported = read_source(path, head)
    model = imported.potential.eval()
    model.checkpoint_metadata = {"source": provenance(path, imported, head), "path": str(path)}
    return model


def write_imported_checkpoint(
    path: str | Path,
    out: str | Path,
    head: str | None = None,
    check: Callable[[Potential, dict], Any] | None = None,
) -> dict[str, Any]:
    """Import ``path`` and write our checkpoint to ``out`` (atomically: nothing is written on any failure).

    Args:
        check: ``check(model, source)`` before anything is written (e.g. the comparison with the original
            package, :func:`mpnn_ip.interop.check.compare_with_peer`); raising stops the import. What it
            returns is stored as ``source["check"]``.
    Returns: the written checkpoint's ``mpnn_ip`` metadata.
    """
    from mpnn_ip.train.checkpoint_io import atomic_torch_save

    model = import_model(path, head)
    source = model.checkpoint_metadata["source"]
    if check is not None:
        source["check"] = check(model, source)
    ckpt = imported_checkpoint(model, source)
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(ckpt, out)
    return ckpt["mpnn_ip"]
