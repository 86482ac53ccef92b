"""Safe, bounded-memory reading and writing of ``.npz`` files.

``NpzWriter`` streams arrays into an npz (a zip of ``.npy`` members) chunk by chunk, so a
benchmark file of several GiB is written without holding it in memory; the file appears under
its final name only when every declared array is complete (temporary file, fsync, atomic
rename), and its SHA-256 is known without reading it back. ``load_npz`` never unpickles,
memory-maps uncompressed members and reads compressed ones lazily, key by key;
``load_npz_rows`` reads a row range of one member (a memmap slice when stored, a streamed
skip-and-read when deflated).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format

from .._files import commit_temp, make_temp

__all__ = [
    "NpzFormatError",
    "NpzWriter",
    "load_npz",
    "load_npz_rows",
    "npz_array_info",
    "npz_is_complete",
    "save_npz_atomic",
]

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip local file header (30 bytes)
_LOCAL_MAGIC = b"PK\x03\x04"
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, struct.error)
_COPY_BYTES = 1 << 24  # bytes per read when skipping rows of a compressed member


class NpzFormatError(ValueError):
    """An npz file is unreadable, corrupt, lacks a key, or holds pickled objects."""


def _member(key: str) -> str:
    return f"{key}.npy"


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key or "/" in key or "\\" in key:
        raise ValueError(f"array name must be a non-empty string without '/', got {key!r}")


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    try:
        return zipfile.ZipFile(path)
    except _READ_ERRORS as exc:
        raise NpzFormatError(f"{path} is not a readable npz (zip) file: {exc}") from exc


def _members(path: Path, zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    return {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}


def _require(path: Path, members: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    missing = [k for k in keys if k not in members]
    if missing:
        raise NpzFormatError(f"{path} lacks array(s) {missing}; arrays present: {sorted(members)}")
    return keys


def _read_header(fp: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = npy_format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(fp)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return shape, fortran, dtype


def _refuse_objects(path: Path, key: str, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise NpzFormatError(
            f"{path}: array {key!r} holds Python objects (dtype {dtype}); loading it would "
            "need pickle, which is refused for safety"
        )


def _data_start(path: Path, info: zipfile.ZipInfo) -> int:
    """Byte offset of a member's data: after its local header, name and extra field."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        raw = fh.read(_LOCAL_HEADER.size)
    fields = _LOCAL_HEADER.unpack(raw)
    if fields[0] != _LOCAL_MAGIC:
        raise zipfile.BadZipFile(f"bad local header for member {info.filename!r}")
    name_len, extra_len = fields[-2], fields[-1]
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def _memmap_member(path: Path, key: str, info: zipfile.ZipInfo) -> np.ndarray:
    """Memory-map an uncompressed ``.npy`` member in place (read-only)."""
    start = _data_start(path, info)
    with open(path, "rb") as fh:
        fh.seek(start)
        shape, fortran, dtype = _read_header(fh)
        offset = fh.tell()
    _refuse_objects(path, key, dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset + nbytes > start + info.file_size or offset + nbytes > path.stat().st_size:
        raise NpzFormatError(f"{path}: array {key!r} is truncated (file incomplete or corrupt)")
    if nbytes == 0:
        return np.empty(shape, dtype=dtype)
    order = "F" if fortran else "C"
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)


def _read_payload(path: Path, key: str, fp: IO[bytes]) -> np.ndarray:
    """Read one ``.npy`` member from its start into memory (no pickle)."""
    shape, fortran, dtype = _read_header(fp)
    _refuse_objects(path, key, dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = bytearray(nbytes)
    if nbytes and fp.readinto(buf) != nbytes:
        raise NpzFormatError(f"{path}: array {key!r} is truncated (file incomplete or corrupt)")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def load_npz(
    path: str | Path, keys: Iterable[str] | None = None, *, mmap: bool = True
) -> dict[str, np.ndarray]:
    """Load the arrays ``keys`` (all when None) of an npz without pickle.

    Uncompressed members are memory-mapped when ``mmap`` (bounded memory for large benchmark
    files); compressed members are decompressed into memory, only those asked for.
    Raises FileNotFoundError for a missing file and NpzFormatError (naming the file) for a
    corrupt file, missing keys or object arrays.
    """
    path = Path(path)
    with _open_zip(path) as zf:
        members = _members(path, zf)
        wanted = _require(path, members, sorted(members) if keys is None else keys)
        out: dict[str, np.ndarray] = {}
        for key in wanted:
            info = members[key]
            try:
                if mmap and info.compress_type == zipfile.ZIP_STORED:
                    out[key] = _memmap_member(path, key, info)
                else:
                    with zf.open(info) as fp:
                        out[key] = _read_payload(path, key, fp)
            except NpzFormatError:
                raise
            except _READ_ERRORS as exc:
                raise NpzFormatError(f"{path}: cannot read array {key!r}: {exc}") from exc
        return out


def npz_array_info(path: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array of an npz, reading only the ``.npy`` headers."""
    path = Path(path)
    with _open_zip(path) as zf:
        out = {}
        for key, info in _members(path, zf).items():
            try:
                with zf.open(info) as fp:
                    shape, _, dtype = _read_header(fp)
            except _READ_ERRORS as exc:
                raise NpzFormatError(f"{path}: cannot read header of {key!r}: {exc}") from exc
            out[key] = (shape, dtype)
        return out


def load_npz_rows(path: str | Path, key: str, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` (axis 0) of one array, without loading the rest.

    A stored member is sliced from its memmap; a compressed one is decompressed as a stream,
    skipping the first ``start`` rows, so memory stays bounded by the rows returned.
    """
    path = Path(path)
    with _open_zip(path) as zf:
        members = _members(path, zf)
        _require(path, members, [key])
        info = members[key]
        try:
            if info.compress_type == zipfile.ZIP_STORED:
                arr = _memmap_member(path, key, info)
                _check_rows(path, key, arr.shape, start, stop)
                return arr[start:stop]
            with zf.open(info) as fp:
                shape, fortran, dtype = _read_header(fp)
                _refuse_objects(path, key, dtype)
                _check_rows(path, key, shape, start, stop)
                if fortran and len(shape) > 1:
                    raise NpzFormatError(f"{path}: {key!r} is Fortran-ordered; rows not contiguous")
                row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
                _skip(fp, start * row_bytes)
                buf = bytearray((stop - start) * row_bytes)
                got = fp.readinto(buf) if buf else 0
        except NpzFormatError:
            raise
        except _READ_ERRORS as exc:
            raise NpzFormatError(f"{path}: cannot read array {key!r}: {exc}") from exc
    if got != len(buf):
        raise NpzFormatError(f"{path}: array {key!r} is truncated")
    return np.frombuffer(buf, dtype=dtype).reshape((stop - start, *shape[1:]))


def _check_rows(path: Path, key: str, shape: tuple[int, ...], start: int, stop: int) -> None:
    if not shape or not 0 <= start <= stop <= shape[0]:
        raise IndexError(f"{path}: rows {start}:{stop} out of range for {key!r} of shape {shape}")


def _skip(fp: IO[bytes], nbytes: int) -> None:
    while nbytes > 0:
        got = len(fp.read(min(nbytes, _COPY_BYTES)))
        if got == 0:
            raise EOFError("unexpected end of member data")
        nbytes -= got


def npz_is_complete(path: str | Path, keys: Iterable[str], rows: int | None = None) -> bool:
    """True when ``path`` exists, is a readable npz holding ``keys``, each with ``rows`` rows.

    Used to resume interrupted benchmark generation: ``NpzWriter`` only ever leaves complete
    files under a final name, so this guards against foreign or damaged files.
    """
    path = Path(path)
    if not path.is_file():
        return False
    try:
        info = npz_array_info(path)
    except (NpzFormatError, OSError):
        return False
    for key in keys:
        if key not in info or (rows is not None and (not info[key][0] or info[key][0][0] != rows)):
            return False
    return True


class _HashingStream:
    """A write-only, forward-only view of a binary file that hashes every byte written.

    It offers no ``seek``, so ``zipfile`` writes each member once, front to back (sizes and
    CRC go in a data descriptor after the data instead of being patched into the header), and
    the running SHA-256 is the file's own; a writer need not read gigabytes back to hash them.
    """

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self._digest = hashlib.sha256()
        self._position = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._digest.update(view)
        self._fh.write(view)
        self._position += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        self._fh.flush()

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


class NpzWriter:
    """Stream arrays into an npz with bounded memory; atomic and all-or-nothing.

    Usage::

        with NpzWriter(path) as w:
            w.add("labels", labels)                      # a whole (small) array
            w.declare("images", (n, 224, 224, 3), np.uint8)
            for batch in batches:                        # rows in order along axis 0
                w.write("images", batch)
        # here ``path`` exists and is complete; after an exception nothing is left

    A zip holds one open member at a time, so arrays are written one after another: once
    ``write`` has started an array, it must be completed before another is started (or
    ``add``-ed). ``close`` checks that every declared array got all its rows, then fsyncs and
    renames the temporary file (in the destination folder) to ``path``; on any failure the
    temporary file is removed. ``compress=True`` uses ZIP_DEFLATED (smaller, slower, and no
    memory-mapping on read). ``sha256`` is the finished file's digest, computed while writing.
    """

    def __init__(self, path: str | Path, *, compress: bool = False, overwrite: bool = True):
        self.path = Path(path)
        if self.path.suffix != ".npz":
            raise ValueError(f"npz path must end in '.npz', got {self.path}")
        if not overwrite and self.path.exists():
            raise FileExistsError(f"{self.path} already exists")
        fd, self._tmp = make_temp(self.path)
        self._fh = os.fdopen(fd, "wb")
        self._hashing = _HashingStream(self._fh)
        compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        self._zip = zipfile.ZipFile(self._hashing, "w", compression=compression, allowZip64=True)
        self._declared: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._rows: dict[str, int] = {}
        self._started: set[str] = set()
        self._current: str | None = None
        self._stream: IO[bytes] | None = None
        self._finished = False
        self._completed = False

    def declare(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
        """Announce an array of a fixed ``shape`` and ``dtype`` to be written in row chunks."""
        self._check_open()
        _check_key(name)
        if name in self._declared:
            raise ValueError(f"array {name!r} is already declared in {self.path.name}")
        shape = tuple(int(s) for s in shape)
        if not shape or any(s < 0 for s in shape):
            raise ValueError(f"shape of {name!r} must have >= 1 non-negative dims, got {shape}")
        dtype = np.dtype(dtype)
        if dtype.hasobject:
            raise TypeError(f"array {name!r}: object dtypes cannot be stored without pickle")
        self._declared[name] = (shape, dtype)
        self._rows[name] = 0

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the finished file (hashed as it was written)."""
        if not self._completed:
            raise ValueError(f"NpzWriter for {self.path} has not completed the file")
        return self._hashing.hexdigest()

    @property
    def closed(self) -> bool:
        """True once the file was completed (``close``) or discarded (``abort``)."""
        return self._finished

    def rows_written(self, name: str) -> int:
        """Rows of ``name`` written so far."""
        if name not in self._rows:
            raise KeyError(f"array {name!r} is not declared; declared: {sorted(self._declared)}")
        return self._rows[name]

    def write(self, name: str, chunk: Any) -> None:
        """Append ``chunk`` (rows along axis 0, exact declared dtype) to array ``name``."""
        self._check_open()
        if name not in self._declared:
            raise KeyError(f"array {name!r} is not declared; declared: {sorted(self._declared)}")
        shape, dtype = self._declared[name]
        arr = np.asarray(chunk)
        if arr.dtype != dtype:
            raise TypeError(f"chunk for {name!r} has dtype {arr.dtype}, declared {dtype}")
        if arr.ndim != len(shape) or arr.shape[1:] != shape[1:]:
            raise ValueError(
                f"chunk for {name!r} has shape {arr.shape}, expected (k, *{shape[1:]})"
            )
        if self._rows[name] + arr.shape[0] > shape[0]:
            raise ValueError(
                f"too many rows for {name!r}: {self._rows[name]} written + {arr.shape[0]} "
                f"> declared {shape[0]}"
            )
        self._begin(name)
        if arr.size:
            assert self._stream is not None
            self._stream.write(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)
        self._rows[name] += arr.shape[0]
        if self._rows[name] == shape[0]:
            self._end()

    def add(self, name: str, array: Any) -> None:
        """Declare and write a whole array at once (for small arrays such as labels)."""
        arr = np.asarray(array)
        self.declare(name, arr.shape, arr.dtype)
        self.write(name, arr)

    def _begin(self, name: str) -> None:
        if self._current == name:
            return
        if self._current is not None:
            done, total = self._rows[self._current], self._declared[self._current][0][0]
            raise ValueError(
                f"array {self._current!r} is incomplete ({done} of {total} rows) in "
                f"{self.path.name}: finish it before writing {name!r} (one array at a time)"
            )
        if name in self._started:
            raise ValueError(f"array {name!r} was already written completely")
        self._started.add(name)
        shape, dtype = self._declared[name]
        self._stream = self._zip.open(_member(name), "w", force_zip64=True)
        header = {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        try:
            npy_format.write_array_header_1_0(self._stream, header)
        except ValueError:  # header too large for format 1.0
            npy_format.write_array_header_2_0(self._stream, header)
        self._current = name

    def _end(self) -> None:
        assert self._stream is not None
        self._stream.close()
        self._stream, self._current = None, None

    def _check_open(self) -> None:
        if self._finished:
            raise ValueError(f"NpzWriter for {self.path} is closed")

    def close(self) -> Path:
        """Validate completeness, then fsync and atomically rename to the final path."""
        if self._finished:
            return self.path
        try:
            for name, (shape, _) in self._declared.items():
                if shape[0] == 0 and name not in self._started and self._current is None:
                    self._begin(name)  # an empty array still needs its member
                    self._end()
            incomplete = {
                n: f"{self._rows[n]}/{s[0]} rows"
                for n, (s, _) in self._declared.items()
                if self._rows[n] != s[0]
            }
            if incomplete:
                raise ValueError(f"{self.path.name}: arrays not fully written: {incomplete}")
            self._zip.close()
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            commit_temp(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._finished = self._completed = True
        return self.path

    def abort(self) -> None:
        """Discard everything written; no file is left behind."""
        self._finished = True
        with contextlib.suppress(Exception):
            if self._stream is not None:
                self._stream.close()
        with contextlib.suppress(Exception):
            self._zip.close()
        with contextlib.suppress(Exception):
            self._fh.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


def save_npz_atomic(path: str | Path, *, compress: bool = False, **arrays: Any) -> Path:
    """Write ``arrays`` to ``path`` atomically (temporary file + rename); returns the path."""
    if not arrays:
        raise ValueError("save_npz_atomic needs at least one array")
    with NpzWriter(path, compress=compress) as writer:
        for name, array in arrays.items():
            writer.add(name, array)
    return Path(path)
