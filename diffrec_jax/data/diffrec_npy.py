"""The ``*_list.npy`` format released with DiffRec, read without pickle.

:func:`load_diffrec_npy` reads ``train_list.npy`` / ``valid_list.npy`` / ``test_list.npy`` (and an
optional ``item_emb.npy``). Each file goes through a safe reader that parses the ``.npy`` header
itself, refuses object (pickled) arrays and checks the declared size against the file before
numpy allocates anything; every problem raises :class:`~diffrec_jax.data.DataError` naming the
file. (:func:`diffrec_jax.data.tabular.write_diffrec_npy` writes the format.)
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from diffrec_jax.data.containers import CSR, SPLITS, DataError, InteractionData
from diffrec_jax.data.validation import (
    check_duplicates,
    check_leakage,
    validate,
    validate_item_emb,
)

__all__ = ["load_diffrec_npy"]

PathLike = str | os.PathLike

_NPY_MAGIC = b"\x93NUMPY"
_MAX_ID = 2**31  # item ids are stored as int32; larger ids cannot be dense indices
_DIFFREC_FILES = ("train_list.npy", "valid_list.npy", "test_list.npy")


def _read_npy_header(f: Any, path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Parse a .npy header (``f`` positioned after the magic string), without reading data.

    Returns:
        ``(shape, dtype, data_offset)``.

    Raises:
        DataError: unsupported version or malformed header.
    """
    version = f.read(2)
    if len(version) != 2 or (version[0], version[1]) not in ((1, 0), (2, 0), (3, 0)):
        raise DataError(f"{path}: not a valid .npy file (unsupported format version {version!r})")
    reader = (
        np.lib.format.read_array_header_1_0
        if version[0] == 1
        else np.lib.format.read_array_header_2_0  # 3.0 only differs for non-ASCII field names
    )
    try:
        shape, _fortran, dtype = reader(f)
    except (ValueError, TypeError, SyntaxError, EOFError, KeyError) as e:
        raise DataError(f"{path}: not a valid .npy file (corrupt header): {e}") from e
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise DataError(f"{path}: not a valid .npy file (bad shape {shape!r} in header)")
    return tuple(shape), np.dtype(dtype), f.tell()


def _load_npy(path: Path) -> np.ndarray:
    """Load one .npy file without pickle, turning every failure into DataError.

    Args:
        path: file path.

    Returns:
        The array.

    Raises:
        DataError: missing, unreadable, not a .npy, pickled/object, or truncated file.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
            if magic != _NPY_MAGIC:
                raise DataError(f"{path}: not a valid .npy file (bad magic bytes {magic!r})")
            header = _read_npy_header(f, path)
            file_size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read file: {e}") from e
    shape, dtype, data_offset = header
    if dtype.hasobject:
        raise DataError(f"{path}: refusing to load pickled data (object dtype {dtype})")
    # Check the size before np.load allocates: a header may declare an enormous shape.
    want = math.prod(shape) * dtype.itemsize
    have = file_size - data_offset
    if have != want:
        what = "truncated" if have < want else "trailing bytes after the array"
        raise DataError(
            f"{path}: not a valid .npy file (corrupt or truncated: {what}): the header declares "
            f"shape {shape} of {dtype} = {want} data bytes, the file holds {have}"
        )
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        msg = str(e)
        if "pickle" in msg.lower() or "object arrays" in msg.lower():
            raise DataError(
                f"{path}: refusing to load pickled data (object array; allow_pickle=False): {msg}"
            ) from e
        raise DataError(f"{path}: not a valid .npy file (corrupt or truncated): {msg}") from e
    except (OSError, EOFError, MemoryError) as e:
        raise DataError(f"{path}: not a valid .npy file (corrupt or truncated): {e}") from e
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: expected a single array in .npy format, got {type(arr).__name__}")
    if arr.dtype.hasobject:
        raise DataError(f"{path}: refusing to load pickled data (object dtype {arr.dtype})")
    return arr


def _check_pair_array(arr: np.ndarray, path: Path) -> np.ndarray:
    """Check a (user, item) list: integer ``[N, 2]``, non-empty, no negative id.

    Args:
        arr: the loaded array.
        path: its file (for messages).

    Returns:
        int64 ``[N, 2]``.
    """
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DataError(
            f"{path}: wrong shape {arr.shape}, expected (N, 2) rows of (user_id, item_id)"
        )
    if arr.dtype.kind not in "iu":  # not issubdtype(integer): timedelta64 would pass that
        kind = "float" if np.issubdtype(arr.dtype, np.floating) else "non-integer"
        raise DataError(
            f"{path}: {kind} dtype {arr.dtype}, expected integer ids; refusing to cast "
            f"(even if the values look integral)"
        )
    if arr.shape[0] == 0:
        raise DataError(f"{path}: empty split (0 interactions)")
    if arr.dtype == np.uint64 and arr.max() > np.iinfo(np.int64).max:
        raise DataError(f"{path}: id {arr.max()} too large for int64")
    arr = arr.astype(np.int64, copy=False)
    neg = arr < 0
    if neg.any():
        r = int(np.argmax(neg.any(axis=1)))
        raise DataError(
            f"{path}: {int(neg.sum())} negative id(s); first at row {r}: "
            f"(user {arr[r, 0]}, item {arr[r, 1]}); ids must be 0-based"
        )
    big = arr >= _MAX_ID
    if big.any():
        r = int(np.argmax(big.any(axis=1)))
        raise DataError(
            f"{path}: id too large at row {r}: (user {arr[r, 0]}, item {arr[r, 1]}); ids must be "
            f"dense 0-based indices below 2**31 (item ids are stored as int32)"
        )
    return arr


def load_diffrec_npy(data_dir: PathLike, *, name: str | None = None) -> InteractionData:
    """Load a dataset in the DiffRec ``*_list.npy`` format.

    ``data_dir`` must contain ``train_list.npy``, ``valid_list.npy`` and
    ``test_list.npy``: integer arrays of shape ``(N, 2)`` with rows
    ``(user_id, item_id)``, 0-based. As in the reference code,
    ``n_users = max(train user) + 1`` and ``n_items = max(train item) + 1``,
    computed from train only; valid/test ids must lie inside those bounds. Within
    each user, the row order of each file is kept (chronological in the released
    files). An optional ``item_emb.npy`` (float ``[n_items, D]``, finite) is loaded
    as float32.

    Args:
        data_dir: directory holding the files.
        name: dataset name; defaults to the directory name.

    Returns:
        The validated dataset (values 1.0).

    Raises:
        DataError: naming the file and the problem (missing file, not a .npy,
            pickled data, wrong shape, non-integer dtype, negative or out-of-range
            ids, empty split, duplicate pairs, leakage between splits, bad item_emb).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(
            f"{data_dir}: directory not found; expected a directory with "
            f"{', '.join(_DIFFREC_FILES)} (and optionally item_emb.npy)"
        )
    paths = {s: data_dir / f"{s}_list.npy" for s in SPLITS}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(
            f"{', '.join(missing)}: file not found; a DiffRec data directory must contain "
            f"{', '.join(_DIFFREC_FILES)} (and optionally item_emb.npy)"
        )
    arrays = {s: _check_pair_array(_load_npy(p), p) for s, p in paths.items()}

    train = arrays["train"]
    n_users = int(train[:, 0].max()) + 1
    n_items = int(train[:, 1].max()) + 1
    for s in ("valid", "test"):
        arr, p = arrays[s], paths[s]
        for col, label, bound in ((0, "user", n_users), (1, "item", n_items)):
            bad = arr[:, col] >= bound
            if bad.any():
                r = int(np.argmax(bad))
                raise DataError(
                    f"{p}: {int(bad.sum())} {label} id(s) out of range; first at row {r}: "
                    f"{label} {arr[r, col]} >= n_{label}s = {bound}, which is derived from "
                    f"{paths['train'].name} (max train {label} id + 1)"
                )
    for s in SPLITS:
        check_duplicates(arrays[s][:, 0], arrays[s][:, 1], n_items, str(paths[s]))
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        check_leakage(
            (arrays[a][:, 0], arrays[a][:, 1]),
            (arrays[b][:, 0], arrays[b][:, 1]),
            n_items,
            str(paths[a]),
            str(paths[b]),
        )

    item_emb = None
    emb_path = data_dir / "item_emb.npy"
    if emb_path.exists():
        emb = _load_npy(emb_path)
        if emb.ndim != 2 or emb.shape[0] != n_items or emb.shape[1] < 1:
            raise DataError(
                f"{emb_path}: item_emb has wrong shape {emb.shape}, expected "
                f"(n_items={n_items}, D) with n_items from {paths['train'].name}"
            )
        if not np.issubdtype(emb.dtype, np.floating):
            raise DataError(f"{emb_path}: item_emb must be floating point, got dtype {emb.dtype}")
        with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf, refused below
            item_emb = emb.astype(np.float32)
        validate_item_emb(item_emb, n_items, str(emb_path))

    try:
        csrs = {
            s: CSR.from_pairs(arrays[s][:, 0], arrays[s][:, 1], n_users, n_items) for s in SPLITS
        }
    except MemoryError as e:
        raise DataError(
            f"{paths['train']}: ids imply {n_users} users x {n_items} items, too many to hold "
            f"({e}); ids must be dense 0-based indices"
        ) from e
    data = InteractionData(
        name=name if name is not None else data_dir.resolve().name,
        n_users=n_users,
        n_items=n_items,
        train=csrs["train"],
        valid=csrs["valid"],
        test=csrs["test"],
        item_emb=item_emb,
    )
    validate(data, source=str(data_dir))
    return data
