"""Reading the tensors of a TorchScript archive (OpenAI's CLIP ``ViT-L-14.pt``) as plain data.

``torch.jit.load`` runs code from the archive: a scripted class's ``__setstate__`` is
TorchScript that executes at load time and can, for one, create and overwrite files through
``torch.from_file``. A weight file is untrusted input, so nothing in it is ever executed here.

A TorchScript archive is a zip: ``PREFIX/data.pkl`` pickles the module tree (each module an
object of a ``__torch__.*`` class whose state is a dict of its attributes) and every tensor's
bytes are a plain record ``PREFIX/data/KEY``. This module unpickles ``data.pkl`` with an
unpickler that resolves only a fixed list of names, none of which runs code from the file:
``__torch__.*`` classes become inert :class:`ScriptObject` records (their TorchScript, in
``code/``, is never read), tensors are rebuilt from the storage records after bounds checks,
and any other global is refused by name. The result is the flat ``{"a.b.c": tensor}`` view that
``state_dict()`` would give, minus anything only code could compute.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import sys
import zipfile
from typing import Any, Union

import torch

from cover_engine.runtime.errors import ArchiveError

__all__ = ["ArchiveError", "ScriptObject", "is_torchscript_archive", "read_script_tensors"]

PathLike = Union[str, os.PathLike]

#: Storage class names in ``data.pkl`` and the dtype of their elements.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

#: How deep a module tree may nest (ViT-L/14 is 6 levels); deeper is refused, not recursed.
MAX_DEPTH = 64


class ScriptObject:
    """Stand-in for an object of a scripted class: keeps the pickled state, runs nothing.

    Each ``__torch__.*`` name gets its own empty subclass (pickle's NEWOBJ needs a type)."""

    type_name = "__torch__"

    def __new__(cls, *_args, **_kwargs):  # NEWOBJ/REDUCE arguments are ignored: nothing to run
        obj = super().__new__(cls)
        obj.state = None
        return obj

    def __setstate__(self, state: Any) -> None:  # pickle's BUILD: record, never interpret
        self.state = state


class _StorageType:
    """Marker for ``torch.XStorage`` in a persistent id: only its dtype is used."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _ordered_dict(*args) -> "collections.OrderedDict":
    if args:  # backward hooks and similar: empty in any weight file
        raise ArchiveError("unexpected arguments to OrderedDict")
    return collections.OrderedDict()


def _same(value, *_ignored):
    """``torch.jit._pickle`` list builders and type tags: the data itself, unchanged."""
    return value


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, *_meta):
    if not isinstance(storage, torch.Tensor):
        raise ArchiveError("a tensor's storage is not a storage record")
    if not (isinstance(offset, int) and isinstance(size, (tuple, list))
            and isinstance(stride, (tuple, list)) and len(size) == len(stride)
            and all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride))):
        raise ArchiveError("a tensor has a malformed offset, size or stride")
    if 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.numel():
            raise ArchiveError(f"a tensor of size {tuple(size)} reaches past its storage "
                               f"({storage.numel()} elements)")
    return storage.as_strided(tuple(size), tuple(stride), offset)


#: The only names ``data.pkl`` may refer to, each mapped to a function of this module.
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch.jit._pickle", "build_intlist"): _same,
    ("torch.jit._pickle", "build_doublelist"): _same,
    ("torch.jit._pickle", "build_boollist"): _same,
    ("torch.jit._pickle", "build_tensorlist"): _same,
    ("torch.jit._pickle", "restore_type_tag"): _same,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, torch.Tensor] = {}
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            full = f"{module}.{name}"
            if full not in self._classes:
                self._classes[full] = type("ScriptObject", (ScriptObject,), {"type_name": full})
            return self._classes[full]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise ArchiveError(f"data.pkl refers to {module}.{name}; only tensors and module "
                               "attributes are read from a weight file") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0):
            what = pid[0] if isinstance(pid, tuple) and pid and isinstance(pid[0], str) else \
                type(pid).__name__
            raise ArchiveError(f"unsupported persistent id {what[:40]!r} in data.pkl")
        _, kind, key, _location, numel = pid
        if key in self._storages:
            return self._storages[key]
        record = f"{self._prefix}/data/{key}"
        try:
            info = self._archive.getinfo(record)
        except KeyError:
            raise ArchiveError(f"storage record {record} is missing") from None
        itemsize = torch.empty((), dtype=kind.dtype).element_size()
        if info.compress_type != zipfile.ZIP_STORED:  # torch stores them; no zip bombs
            raise ArchiveError(f"storage record {record} is compressed, not stored")
        if info.file_size != numel * itemsize:
            raise ArchiveError(f"storage record {record} holds {info.file_size} bytes, not "
                               f"{numel} elements of {itemsize} bytes")
        data = bytearray(self._archive.read(info))
        storage = torch.frombuffer(data, dtype=kind.dtype) if numel else \
            torch.empty(0, dtype=kind.dtype)
        self._storages[key] = storage
        return storage


def _prefix(archive: zipfile.ZipFile) -> str:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise ArchiveError("no single PREFIX/data.pkl record")
    return pickles[0][: -len("/data.pkl")]


def is_torchscript_archive(path: PathLike) -> bool:
    """True for a zip laid out as ``torch.jit.save`` writes it (``data.pkl`` and ``constants.pkl``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and \
        any(n.endswith("/data.pkl") for n in names)


def _flatten(obj: Any, prefix: str, out: dict[str, torch.Tensor], seen: set[int], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ArchiveError(f"module tree nested deeper than {MAX_DEPTH} levels")
    if id(obj) in seen:
        return
    seen.add(id(obj))
    state = obj.state if isinstance(obj, ScriptObject) else obj
    if not isinstance(state, dict):
        return  # a custom __getstate__ result: no attribute names to match, nothing used
    for key, value in state.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, torch.Tensor):
            out[prefix + key] = value
        elif isinstance(value, (ScriptObject, dict)):
            _flatten(value, f"{prefix}{key}.", out, seen, depth + 1)


def read_script_tensors(path: PathLike) -> dict[str, torch.Tensor]:
    """Every tensor attribute of the archive's module tree by dotted name (``visual.proj``...).

    Raises :class:`ArchiveError` for anything outside plain tensors and module attributes.
    """
    if sys.byteorder != "little":
        raise ArchiveError("reading TorchScript archives needs a little-endian machine")
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = _prefix(archive)
            order = f"{prefix}/byteorder"
            if order in archive.namelist() and archive.read(order).strip() not in (b"little", b""):
                raise ArchiveError("tensors are stored big-endian")
            root = _Unpickler(archive.read(f"{prefix}/data.pkl"), archive, prefix).load()
    except ArchiveError:
        raise
    except RecursionError:
        raise ArchiveError("data.pkl nests too deeply") from None
    except Exception as exc:  # truncated zip, corrupt pickle, wrong types in REDUCE...
        text = " ".join(str(exc).split())[:120]
        raise ArchiveError(f"{type(exc).__name__}: {text}" if text else type(exc).__name__) from None
    tensors: dict[str, torch.Tensor] = {}
    _flatten(root, "", tensors, set(), 0)
    return tensors
