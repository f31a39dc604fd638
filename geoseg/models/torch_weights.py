"""Read PyTorch state dicts (``.pth``/``.pt``) into NumPy arrays without PyTorch, executing no code."""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from geoseg.errors import ModelError

__all__ = ["read_state_dict"]

_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
           "ByteStorage": np.uint8, "BoolStorage": np.bool_}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _Storage:
    def __init__(self, dtype: type, numel: int) -> None:
        self.dtype, self.numel, self.data = np.dtype(dtype), numel, None


class _Tensor:
    """A tensor whose storage bytes may come later in the file (legacy format)."""

    def __init__(self, storage: _Storage, offset: int, size, stride) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self) -> np.ndarray:
        item = self.storage.dtype.itemsize
        strides = [s * item for s in self.stride]
        return np.lib.stride_tricks.as_strided(self.storage.data[self.offset :], self.size, strides).copy()


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *rest):
    return _Tensor(storage, storage_offset, size, stride)


class _Unpickler(pickle.Unpickler):
    """Resolves only what a plain state dict holds: OrderedDict, tensors and typed storages."""

    def __init__(self, file, load_storage) -> None:
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _DTYPES:
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a plain state dict")

    def persistent_load(self, pid):
        if pid[0] != "storage" or pid[1] not in _DTYPES:
            raise pickle.UnpicklingError(f"unsupported storage {pid[:2]!r}")
        return self._load_storage(_DTYPES[pid[1]], str(pid[2]), int(pid[4]))


def _read_zip(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        pkl = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        prefix = pkl[: -len("data.pkl")]

        def load(dtype, key, numel):
            storage = _Storage(dtype, numel)
            storage.data = np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=storage.dtype)
            return storage

        return _Unpickler(io.BytesIO(archive.read(pkl)), load).load()


def _read_legacy(path: Path) -> dict:
    storages: dict[str, _Storage] = {}

    def load(dtype, key, numel):
        return storages.setdefault(key, _Storage(dtype, numel))

    with open(path, "rb") as f:
        if pickle.load(f) != _LEGACY_MAGIC:
            raise pickle.UnpicklingError("not a PyTorch checkpoint (bad magic number)")
        pickle.load(f), pickle.load(f)  # protocol version, system info
        result = _Unpickler(f, load).load()
        for key in pickle.load(f):
            (numel,) = struct.unpack("<q", f.read(8))
            storage = storages[key]
            storage.data = np.frombuffer(f.read(numel * storage.dtype.itemsize), dtype=storage.dtype)
    return result


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict (zip or legacy format) as ``{name: array}``; PyTorch is not needed.

    Only plain state dicts load: the unpickler resolves ``OrderedDict``, tensors and
    typed storages and refuses anything else, so no code in the file ever runs.

    Raises
    ------
    ModelError
        When the file is missing, is not a PyTorch checkpoint or holds more than tensors.
    """
    p = Path(path)
    try:
        state = _read_zip(p) if zipfile.is_zipfile(p) else _read_legacy(p)
    except FileNotFoundError:
        raise ModelError(f"{path}: no such weights file.") from None
    except (pickle.UnpicklingError, EOFError, StopIteration, KeyError, ValueError, struct.error) as exc:
        raise ModelError(f"{path}: not a PyTorch state dict that geoseg can read ({exc}).") from None
    if not isinstance(state, dict):
        raise ModelError(f"{path}: holds a {type(state).__name__}, not a state dict of named tensors.")
    return {k: v.array() for k, v in state.items() if isinstance(v, _Tensor)}
