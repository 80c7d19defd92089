"""TensorFlow Datasets adapter: the ``movielens/*-ratings`` family as our datasets.

Needs the ``tfds`` extra (``pip install "diffrec_jax[tfds]"``: ``tensorflow-datasets`` and
``importlib_resources``), imported only when a function here is called, so the package imports
without it. TensorFlow itself is not needed to *read* a prepared dataset: rows come through
``tfds.data_source`` (random access over ArrayRecord files, NumPy out). Preparing (downloading
and converting) the real MovieLens data once does need ``tensorflow-cpu``; the builder can also
read the GroupLens zip from ``manual_dir`` without network. A copy prepared earlier in TFRecord
format is read with ``tfds.load`` when TensorFlow is installed.

Each example of a ``movielens/<variant>-ratings`` dataset is one rating, with string
``user_id`` and ``movie_id``, float ``user_rating`` (1-5, halves for the newer variants) and
int64 ``timestamp``. These four columns go through the same preparation as your own tables
(:mod:`diffrec_jax.data.tabular`): rating threshold, duplicates, k-core, id re-mapping, then a
per-user temporal or leave-one-out split (:func:`from_tfds_movielens`) or leave-one-out
sequences (:func:`from_tfds_movielens_sequences`).

Offline tests use ``tfds.testing.mock_data`` (random or hand-written examples), see
``tests/test_tfds.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from diffrec_jax.data import tabular
from diffrec_jax.data.containers import DataError, InteractionData

__all__ = ["from_tfds_movielens", "from_tfds_movielens_sequences", "movielens_table"]

PathLike = str | os.PathLike
_FEATURES = ("user_id", "movie_id", "user_rating", "timestamp")


def _import_tfds():
    """Imports ``tensorflow_datasets`` and registers the MovieLens builder (needed without TF)."""
    try:
        tfds = importlib.import_module("tensorflow_datasets")
        importlib.import_module("tensorflow_datasets.structured.movielens")
    except ImportError as e:
        raise ImportError(
            "the TFDS adapter needs tensorflow-datasets (and importlib_resources on Python 3.11): "
            f'pip install "diffrec_jax[tfds]" ({e})'
        ) from e
    return tfds


def _check_name(name: str) -> None:
    if not (isinstance(name, str) and name.startswith("movielens/") and name.endswith("-ratings")):
        raise ValueError(
            f"name must be a movielens/*-ratings dataset (e.g. 'movielens/100k-ratings', "
            f"'movielens/1m-ratings', 'movielens/25m-ratings'), got {name!r}; the *-movies "
            "configs hold no interactions"
        )


def _read_examples(ds: Sequence[Any], source: str) -> dict[str, np.ndarray]:
    """The four columns of a random-access data source (``ds[k]`` for every ``k``).

    Args:
        ds: a ``tfds.data_source`` split (or any sequence of example dicts).
        source: name for messages.

    Returns:
        ``{"users": str [N], "items": str [N], "ratings": float64 [N], "timestamps": int64 [N]}``.
    """
    n = len(ds)
    if n == 0:
        raise DataError(f"{source}: the split has no examples")
    cols: dict[str, list] = {f: [] for f in _FEATURES}
    for k in range(n):
        ex = ds[k]
        try:
            for f in _FEATURES:
                cols[f].append(ex[f])
        except (KeyError, TypeError):
            raise DataError(
                f"{source}: example {k} lacks one of the MovieLens features {list(_FEATURES)}"
            ) from None
    return _columns(cols, source)


def _text(values: list) -> np.ndarray:
    return np.asarray(
        [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values], dtype=str
    )


def _columns(cols: dict[str, list], source: str) -> dict[str, np.ndarray]:
    try:
        ratings = np.asarray(cols["user_rating"], np.float64).reshape(-1)
        stamps = np.asarray(cols["timestamp"], np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"{source}: user_rating / timestamp are not numeric scalars ({e})") from e
    return {
        "users": _text(cols["user_id"]),
        "items": _text(cols["movie_id"]),
        "ratings": ratings,
        "timestamps": stamps,
    }


def _load_columns(
    name: str, split: str, data_dir: PathLike | None, download: bool, manual_dir: PathLike | None
) -> dict:
    tfds = _import_tfds()
    source = f"tfds:{name}[{split}]"
    prepare_kw = {}
    if manual_dir is not None:
        prepare_kw["download_config"] = tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual_dir))
    try:
        ds = tfds.data_source(
            name, split=split, data_dir=data_dir, download=download,
            builder_kwargs={"file_format": "array_record"},
            download_and_prepare_kwargs=prepare_kw,
        )
    except Exception as e:  # noqa: BLE001 - TFDS raises many types; re-raised below
        if importlib.util.find_spec("tensorflow") is None:
            raise RuntimeError(
                f"{source}: tfds.data_source failed ({type(e).__name__}: {e}). Preparing the real "
                "MovieLens data needs TensorFlow once (pip install tensorflow-cpu), or a copy "
                "prepared elsewhere with file_format='array_record' in data_dir"
            ) from e
        # A copy prepared in TFRecord format: read it with TensorFlow.
        it = tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir, download=download,
                                     download_and_prepare_kwargs=prepare_kw))
        cols: dict[str, list] = {f: [] for f in _FEATURES}
        for ex in it:
            for f in _FEATURES:
                cols[f].append(ex[f])
        if not cols["user_id"]:
            raise DataError(f"{source}: the split has no examples") from None
        return _columns(cols, source)
    return _read_examples(ds, source)


def movielens_table(
    name: str = "movielens/100k-ratings",
    split: str = "train",
    *,
    data_dir: PathLike | None = None,
    download: bool = True,
    manual_dir: PathLike | None = None,
    cache_dir: PathLike | None = None,
) -> tabular.Table:
    """The raw (user, item, rating, timestamp) rows of a TFDS MovieLens ratings dataset.

    Args:
        name: ``movielens/<variant>-ratings`` (``100k``, ``1m``, ``20m``, ``25m``,
            ``latest-small``).
        split: TFDS split (MovieLens has only ``"train"``; slicing such as ``"train[:10%]"``
            works).
        data_dir: TFDS data folder (default ``~/tensorflow_datasets``).
        download: let TFDS download and prepare the data if it is missing.
        manual_dir: folder holding the GroupLens zip (e.g. ``ml-1m.zip``, as downloaded from
            grouplens.org) for preparing without network.
        cache_dir: if given, the four columns are cached there as ``.npz`` after the first read
            (reading a big variant example by example takes minutes; the cache takes seconds).

    Returns:
        A :class:`~diffrec_jax.data.tabular.Table` (ids as int64 when canonical integers).
    """
    _check_name(name)
    source = f"tfds:{name}[{split}]"
    cache = None
    if cache_dir is not None:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{name}_{split}")
        cache = Path(cache_dir) / f"{safe}.npz"
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                cols = {k: z[k] for k in ("users", "items", "ratings", "timestamps")}
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{cache}: unreadable TFDS column cache ({e}); delete it") from e
    else:
        cols = _load_columns(name, split, data_dir, download, manual_dir)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, **cols)
    return tabular.from_columns(
        cols["users"], cols["items"], cols["ratings"], cols["timestamps"], source=source
    )


def from_tfds_movielens(
    name: str = "movielens/100k-ratings",
    split: str = "train",
    *,
    data_dir: PathLike | None = None,
    download: bool = True,
    manual_dir: PathLike | None = None,
    cache_dir: PathLike | None = None,
    min_rating: float | None = None,
    k_core: int | tuple[int, int] | None = None,
    split_mode: str = "temporal",
    fractions: Sequence[float] = (0.7, 0.2, 0.1),
    duplicates: str = "first",
    cold_items: str = "drop",
    return_maps: bool = False,
) -> InteractionData | tuple[InteractionData, tabular.IdMaps]:
    """A TFDS MovieLens ratings dataset as an implicit-feedback :class:`InteractionData`.

    ``from_tfds_movielens("movielens/1m-ratings", min_rating=4)`` gives ML-1M with ratings
    >= 4 as positives and a per-user 70/20/10 temporal split, the rows of each user in
    chronological order. The preparation is :func:`diffrec_jax.data.tabular.load_table`'s
    (see there for every step); the dataset is named after the variant (e.g. ``ml-1m``).

    Args:
        name, split, data_dir, download, manual_dir, cache_dir: see :func:`movielens_table`.
        min_rating: keep ratings ``>= min_rating`` (all ratings if None).
        k_core: ``k`` or ``(user_min, item_min)`` iterative k-core (users need >= 3 anyway).
        split_mode: ``"temporal"`` (per user, ``fractions``) or ``"leave_one_out"``.
        fractions: (train, valid, test) shares of the temporal split.
        duplicates: repeated (user, item) ratings: ``"first"``, ``"last"`` or ``"error"``.
        cold_items: ``"drop"`` valid/test rows of items without train rows, or ``"keep"``.
        return_maps: also return the :class:`~diffrec_jax.data.tabular.IdMaps` (raw MovieLens
            ids of our ids).

    Returns:
        ``InteractionData`` (values 1.0), or ``(data, maps)``.
    """
    table = movielens_table(name, split, data_dir=data_dir, download=download,
                            manual_dir=manual_dir, cache_dir=cache_dir)
    return tabular.load_table(
        table, min_rating=min_rating, k_core=k_core, split=split_mode, fractions=fractions,
        duplicates=duplicates, cold_items=cold_items, name=_short_name(name),
        return_maps=return_maps,
    )


def from_tfds_movielens_sequences(
    name: str = "movielens/100k-ratings",
    split: str = "train",
    *,
    data_dir: PathLike | None = None,
    download: bool = True,
    manual_dir: PathLike | None = None,
    cache_dir: PathLike | None = None,
    min_rating: float | None = None,
    k_core: int | tuple[int, int] | None = None,
    duplicates: str = "first",
    max_len: int = 50,
    on_long: str = "truncate",
    save_to: PathLike | None = None,
    return_maps: bool = False,
) -> Any:
    """A TFDS MovieLens ratings dataset as leave-one-out next-item :class:`SequenceData`.

    Each user's rated movies in timestamp order form a sequence (the SASRec / DiffuRec ML-1M
    protocol); see :func:`diffrec_jax.data.tabular.to_sequences` for the steps and arguments.

    Returns:
        :class:`~diffrec_jax.data.sequences.SequenceData` (items ``1..n_items``, 0 pads), or
        ``(data, maps)``.
    """
    table = movielens_table(name, split, data_dir=data_dir, download=download,
                            manual_dir=manual_dir, cache_dir=cache_dir)
    return tabular.to_sequences(
        table, min_rating=min_rating, k_core=k_core, duplicates=duplicates, max_len=max_len,
        on_long=on_long, name=_short_name(name), save_to=save_to, return_maps=return_maps,
    )


def _short_name(name: str) -> str:
    """``movielens/1m-ratings`` -> ``ml-1m``."""
    return "ml-" + name.split("/", 1)[1][: -len("-ratings")]
