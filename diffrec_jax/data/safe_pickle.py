"""A restricted unpickler for data files from elsewhere, and the DiffuRec pickle converter.

``pickle.load`` runs whatever a file tells it to: a pickle names globals (``os.system``,
``builtins.eval``, a class with a malicious ``__reduce__``) that the unpickler imports and calls.
:class:`RestrictedUnpickler` resolves only an explicit allow-list of plain built-in types and
refuses every other global with :class:`UnsafePickleError`, *before* anything is called, so a
hostile file cannot run code. Protocol 2+ pickles of ``dict``/``list``/``tuple``/``str``/``int``/
``float``/``bytes``/``bool``/``None`` need no global at all (they are opcodes); ``set``,
``frozenset``, ``bytearray``, ``complex`` and ``bytes`` in protocols 0-2 (``_codecs.encode``) go
through the allow-list.

numpy's array-reconstruction globals are deliberately *not* allowed: no file this project reads
needs them (the DiffuRec ``dataset.pkl`` holds only dicts, lists and ints), and plain arrays
belong in ``.npy``/``.npz`` files loaded with ``allow_pickle=False``. pandas pickles (DreamRec's
``*.df``) cannot be read without running pandas' reconstruction code; they are refused with a
message that points at the plain ``.npz`` copies shipped beside them.

:func:`convert_diffurec_pickle` turns the DiffuRec ``dataset.pkl`` into a plain ``.npz`` (layout
below, the same as the shipped ``dataset.npz``) and can check the result against a reference.

``.npz`` layout (``U`` users, ``N`` items; item indices are ``1..N``, 0 is DiffuRec's padding):

============================  ==================  ===============================================
array                         dtype, shape        meaning
============================  ==================  ===============================================
``train_items``               int32 ``[sum L_u]`` every ``train[u]`` concatenated, users ``0..U-1``
``train_offsets``             int64 ``[U + 1]``   ``train[u] == train_items[off[u]:off[u + 1]]``
``val_item``                  int32 ``[U]``       ``val[u][0]`` (second-to-last interaction)
``test_item``                 int32 ``[U]``       ``test[u][0]`` (last interaction)
``num_users``                 int64 ``[]``        ``U``
``num_items``                 int64 ``[]``        ``N = len(smap)``
``umap_raw``, ``umap_idx``    int64 ``[U]``       the ``umap`` dict (raw user id -> index),
                                                  as aligned arrays sorted by index
``smap_raw``, ``smap_idx``    int64 ``[N]``       the ``smap`` dict (raw item id -> index),
                                                  as aligned arrays sorted by index
============================  ==================  ===============================================
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from diffrec_jax.data.containers import DataError

__all__ = [
    "ALLOWED_GLOBALS",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "compare_npz",
    "convert_diffurec_pickle",
    "diffurec_arrays",
    "safe_load",
    "safe_loads",
]

PathLike = str | os.PathLike

#: The only globals a pickle may name: plain, side-effect-free built-in types.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [
        ("builtins", name)
        for name in (
            "dict",
            "list",
            "tuple",
            "set",
            "frozenset",
            "int",
            "float",
            "complex",
            "str",
            "bytes",
            "bytearray",
            "bool",
        )
    ]
    # Protocols 0-2 write ``bytes`` as ``_codecs.encode(text, "latin1")``: a pure text-to-bytes
    # conversion (codec lookup only searches the ``encodings`` package).
    + [("_codecs", "encode")]
)

_PANDAS_HINT = (
    "this is a pandas pickle (e.g. DreamRec's *.df): it cannot be read without running pandas' "
    "reconstruction code, which this loader refuses; use the plain .npz copy instead"
)

# The keys of the shipped DiffuRec dataset.npz, in the order they are written.
_DIFFUREC_KEYS = (
    "train_items",
    "train_offsets",
    "val_item",
    "test_item",
    "num_users",
    "num_items",
    "umap_raw",
    "umap_idx",
    "smap_raw",
    "smap_idx",
)


class UnsafePickleError(DataError):
    """A pickle names a global outside :data:`ALLOWED_GLOBALS` (message: the file, the global)."""


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` resolves only :data:`ALLOWED_GLOBALS`.

    Args:
      file: a binary file object.
      source: name used in error messages (usually the file path).
    """

    def __init__(self, file: Any, *, source: str = "<pickle>"):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """Returns an allowed built-in type; raises :class:`UnsafePickleError` for anything else."""
        if module == "__builtin__":  # Python 2 pickles
            module = "builtins"
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        hint = ""
        if module.split(".")[0] == "pandas":
            hint = f"; {_PANDAS_HINT}{_npz_suggestion(self.source)}"
        raise UnsafePickleError(
            f"{self.source}: refusing to unpickle global {module}.{name}: only plain built-in "
            f"types are allowed (dict, list, tuple, set, int, float, str, bytes, ...), because "
            f"loading it could execute code{hint}"
        )

    def persistent_load(self, pid: Any) -> Any:
        """Persistent ids need caller-supplied code to resolve; always refused."""
        raise UnsafePickleError(f"{self.source}: refusing to unpickle a persistent id {pid!r}")


def _npz_suggestion(source: str) -> str:
    """``' (e.g. .../x.npz)'`` listing the ``.npz`` files beside ``source``, or ``''``."""
    try:
        found = sorted(Path(source).parent.glob("*.npz"))
    except (OSError, ValueError):
        return ""
    return f" ({', '.join(str(p) for p in found)})" if found else ""


def _load(f: Any, source: str) -> Any:
    try:
        return RestrictedUnpickler(f, source=source).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated, garbage, or a structurally invalid opcode stream
        raise DataError(f"{source}: not a valid pickle (corrupt or truncated): "
                        f"{type(e).__name__}: {e}") from e


def safe_load(path: PathLike) -> Any:
    """Unpickles ``path`` with :class:`RestrictedUnpickler`.

    Raises:
      UnsafePickleError: the file names a global outside the allow-list (nothing was called).
      DataError: missing, unreadable, truncated or malformed file.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read file: {e}") from e
    with f:
        return _load(f, str(path))


def safe_loads(data: bytes, *, source: str = "<bytes>") -> Any:
    """Unpickles ``data`` with :class:`RestrictedUnpickler` (see :func:`safe_load`)."""
    return _load(io.BytesIO(data), source)


# ----------------------------------------------------------------------------------------------
# DiffuRec dataset.pkl -> .npz
# ----------------------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int_map(obj: Any, key: str, src: str) -> tuple[np.ndarray, np.ndarray]:
    """A ``dict[int, int]`` as ``(raw, idx)`` int64 arrays sorted by ``idx`` (indices unique)."""
    if not isinstance(obj, dict):
        raise DataError(f"{src}: '{key}' must be a dict, got {type(obj).__name__}")
    for k, v in obj.items():
        if not (_is_int(k) and _is_int(v)):
            raise DataError(f"{src}: '{key}' must map int -> int, got {k!r} -> {v!r}")
    raw = np.fromiter(obj.keys(), np.int64, len(obj))
    idx = np.fromiter(obj.values(), np.int64, len(obj))
    order = np.argsort(idx, kind="stable")
    raw, idx = raw[order], idx[order]
    if idx.size > 1 and np.any(idx[1:] == idx[:-1]):
        raise DataError(f"{src}: '{key}' maps two raw ids to the same index")
    return raw, idx


def diffurec_arrays(obj: Any, *, source: str = "<diffurec>") -> dict[str, np.ndarray]:
    """Checks a DiffuRec dataset dict and returns the arrays of the ``.npz`` layout (module doc).

    Checks: exactly the keys ``train``/``val``/``test``/``umap``/``smap``; the three splits
    have the same users ``0..U-1``; every sequence is a list of ints in ``1..N`` (``N =
    len(smap)``); ``val``/``test`` lists have exactly one item; ``umap`` indices are ``0..U-1``
    and ``smap`` indices ``1..N``.

    Raises:
      DataError: naming ``source`` and the problem.
    """
    src = source
    want = {"train", "val", "test", "umap", "smap"}
    if not isinstance(obj, dict) or set(obj) != want:
        got = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"{src}: expected a dict with keys {sorted(want)}, got {got}")
    umap_raw, umap_idx = _int_map(obj["umap"], "umap", src)
    smap_raw, smap_idx = _int_map(obj["smap"], "smap", src)
    n_items = len(smap_idx)
    splits = {s: obj[s] for s in ("train", "val", "test")}
    for s, d in splits.items():
        if not isinstance(d, dict):
            raise DataError(
                f"{src}: '{s}' must be a dict user -> item list, got {type(d).__name__}"
            )
    users = list(splits["train"].keys())
    n_users = len(users)
    if users != list(range(n_users)):
        raise DataError(f"{src}: 'train' users must be 0..U-1 in ascending order")
    for s in ("val", "test"):
        if list(splits[s].keys()) != users:
            raise DataError(f"{src}: '{s}' must have the same users as 'train' (0..{n_users - 1})")
    if not np.array_equal(umap_idx, np.arange(n_users)):
        raise DataError(f"{src}: 'umap' indices must be exactly 0..{n_users - 1}")
    if not np.array_equal(smap_idx, np.arange(1, n_items + 1)):
        raise DataError(f"{src}: 'smap' indices must be exactly 1..{n_items}")

    def seq(s: str, u: int) -> list:
        v = splits[s][u]
        if not isinstance(v, list) or not all(_is_int(x) for x in v):
            raise DataError(f"{src}: '{s}'[{u}] must be a list of ints, got {v!r:.80}")
        return v

    lengths = np.zeros(n_users + 1, np.int64)
    flat: list[int] = []
    single = {"val": np.zeros(n_users, np.int64), "test": np.zeros(n_users, np.int64)}
    for u in users:
        t = seq("train", u)
        flat.extend(t)
        lengths[u + 1] = len(t)
        for s in ("val", "test"):
            v = seq(s, u)
            if len(v) != 1:
                raise DataError(f"{src}: '{s}'[{u}] must hold exactly one item, got {len(v)}")
            single[s][u] = v[0]
    train_items = np.asarray(flat, np.int64)
    for label, arr in (("train", train_items), ("val", single["val"]), ("test", single["test"])):
        if arr.size and (arr.min() < 1 or arr.max() > n_items):
            raise DataError(
                f"{src}: '{label}' item index out of range 1..{n_items}: min {arr.min()}, "
                f"max {arr.max()}"
            )
    return {
        "train_items": train_items.astype(np.int32),
        "train_offsets": np.cumsum(lengths),
        "val_item": single["val"].astype(np.int32),
        "test_item": single["test"].astype(np.int32),
        "num_users": np.asarray(n_users, np.int64),
        "num_items": np.asarray(n_items, np.int64),
        "umap_raw": umap_raw,
        "umap_idx": umap_idx,
        "smap_raw": smap_raw,
        "smap_idx": smap_idx,
    }


def _read_npz(path: PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz``, read with ``allow_pickle=False`` (DataError naming the file)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise DataError(f"{path}: cannot read as a plain .npz: {type(e).__name__}: {e}") from e


def compare_npz(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], *, names: tuple[str, str] = ("a", "b")
) -> list[str]:
    """Differences between two dicts of arrays (keys, dtypes, shapes, values); empty if equal."""
    diffs = []
    if set(a) != set(b):
        diffs.append(f"keys differ: {names[0]} {sorted(a)} vs {names[1]} {sorted(b)}")
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            diffs.append(f"{k}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
        elif not np.array_equal(x, y):
            diffs.append(f"{k}: {int(np.sum(x != y))} value(s) differ")
    return diffs


def convert_diffurec_pickle(
    pkl_path: PathLike, npz_path: PathLike, *, reference: PathLike | None = None
) -> dict[str, np.ndarray]:
    """Converts DiffuRec's ``dataset.pkl`` into a plain ``.npz`` (layout in the module doc).

    The pickle is read with :func:`safe_load` (no code can run), checked with
    :func:`diffurec_arrays`, and written with ``np.savez_compressed`` to a temporary file that is
    renamed onto ``npz_path`` (no half-written output). The written file is read back with
    ``allow_pickle=False`` and compared with the arrays, and with ``reference`` if given (e.g. the
    shipped ``dataset.npz``): keys, dtypes, shapes and values must all be equal.

    Returns:
      The arrays written.

    Raises:
      UnsafePickleError: the pickle names a global outside the allow-list.
      DataError: malformed pickle content, or a mismatch with ``reference`` (listing the
        differences).
    """
    pkl_path, npz_path = Path(pkl_path), Path(npz_path)
    arrays = diffurec_arrays(safe_load(pkl_path), source=str(pkl_path))
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=npz_path.name + ".", suffix=".tmp", dir=npz_path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **{k: arrays[k] for k in _DIFFUREC_KEYS})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, npz_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    diffs = compare_npz(arrays, _read_npz(npz_path), names=("converted", str(npz_path)))
    if diffs:
        raise DataError(f"{npz_path}: read-back differs from the conversion: {'; '.join(diffs)}")
    if reference is not None:
        diffs = compare_npz(arrays, _read_npz(reference), names=(str(pkl_path), str(reference)))
        if diffs:
            raise DataError(
                f"{pkl_path}: converted content differs from {reference}: {'; '.join(diffs)}"
            )
    return arrays
