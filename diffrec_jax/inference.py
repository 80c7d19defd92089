"""Recommendations out of a trained run: ``load(run_dir)``, then ``recommend`` / ``recommend_histories``.

A run directory written by ``experiments/main.py`` holds ``config.json``, ``best/`` (the
parameters of the best validation epoch; ``best/seed_<s>/`` per seed when several seeds were
trained together) and ``results.json``. :func:`load` rebuilds the model from the run's own
config, reloads the dataset it names (or ``data_dir``) and restores the best parameters,
read-only: nothing is written to the run directory.

* :meth:`Recommender.recommend` -- top-K for users of the training data. Interaction models
  read the user's training row (what the evaluation reads) and, by default, never recommend an
  item of it; sequential models read the user's whole known sequence (leave-one-out data only:
  sessions have no users).
* :meth:`Recommender.recommend_histories` -- top-K for histories the caller gives: a list of raw
  item ids (an ordered sequence for sequential models, a set for interaction models) or a dense
  interaction vector. Models that learn one embedding per training user (LightGCN, DiffKG) score
  known users only and refuse this with a clear error.
* Items and users are the dataset's own ids: the raw ids of a CSV/Parquet table when the data
  folder holds ``id_maps.npz`` (:func:`diffrec_jax.data.tabular.write_diffrec_npy` and
  ``to_sequences`` write it), the raw MovieLens ids for ``source="movielens"``, else the file's
  ids.
* Randomness: row ``n`` of a call (user ``u`` for :meth:`recommend`) uses
  ``fold_in(key, n)`` (``fold_in(key, u)``), with ``key = jax.random.key(seed)``. The default
  ``seed=None`` is the run's own evaluation key, so ``recommend`` returns exactly the lists the
  evaluation ranked; the same call always gives the same lists, whatever the batch make-up.
* ``sampling={"noise_steps": 10}`` (any field of the run's ``config.sampling``, e.g. DiffRec's
  ``steps``/``noise``, DreamRec's ``w``, DiffuRec's ``mode``) re-builds the model with that
  sampler for this call; the parameters are shared.
* Batches are padded to a power of two (at most ``batch_size``), so each jitted scorer compiles
  once per (batch bucket, K) and a call over many users streams: no dense
  ``users x items`` matrix is ever held (:meth:`Recommender.iter_recommend`).

Every problem (unknown user or item, empty or over-long history, a run without a checkpoint, a
checkpoint that does not match its config, ``k`` larger than the item count) raises
:class:`InferenceError` naming the run and the problem.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffrec_jax import metrics as metrics_lib
from diffrec_jax import models as model_registry
from diffrec_jax.checkpointing import Checkpointer
from diffrec_jax.data import DataError

__all__ = ["InferenceError", "ListRecommender", "Recommendations", "Recommender", "SequenceRecommender", "load",
           "MAX_HISTORY"]

# Histories longer than this are refused whatever the model (a request-size guard; a
# sequential model reads at most its max_len most recent items anyway).
MAX_HISTORY = 10_000


class InferenceError(ValueError):
    """A run that cannot be loaded or a request that cannot be answered; names the run."""


@dataclasses.dataclass
class Recommendations:
    """Top-K lists. ``items[n, r]`` is the rank-``r`` item of row ``n``, in the dataset's ids.

    Attributes:
      items: ``[N, K]`` item ids (raw ids where the run has id maps).
      scores: float32 ``[N, K]`` the model's scores, best first.
      users: ``[N]`` user ids of :meth:`Recommender.recommend` rows, None for histories.
    """

    items: np.ndarray
    scores: np.ndarray
    users: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def columns(self) -> dict:
        """One row per (user, rank): ``{"user", "rank", "item", "score"}`` column arrays
        (``user`` is the row number for histories; ranks start at 1)."""
        n, k = self.items.shape
        users = np.arange(n) if self.users is None else self.users
        return {
            "user": np.repeat(users, k),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int64), n),
            "item": self.items.reshape(-1),
            "score": self.scores.reshape(-1).astype(np.float32),
        }

    @staticmethod
    def concatenate(parts: Sequence["Recommendations"]) -> "Recommendations":
        users = None if parts[0].users is None else np.concatenate([p.users for p in parts])
        return Recommendations(np.concatenate([p.items for p in parts]),
                               np.concatenate([p.scores for p in parts]), users)


def batch_bucket(n: int, cap: int) -> int:
    """Smallest power of two >= n, capped at ``cap`` (the padded batch size)."""
    return min(cap, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def _load_config(run_dir: str) -> ml_collections.ConfigDict:
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise InferenceError(f"{run_dir}: no config.json (not a run directory written by experiments/main.py)")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise InferenceError(f"{path}: not a readable JSON config ({e})") from None
    if not isinstance(raw, dict) or "model" not in raw or "data" not in raw:
        raise InferenceError(f"{path}: not a run config (no 'model'/'data' groups)")
    return ml_collections.ConfigDict(upgrade_config(raw))


def upgrade_config(raw: dict) -> dict:
    """A ``config.json`` written before the fields got one name per quantity, in today's names
    (``configs/default.py``): the number of diffusion steps is ``diffusion.steps`` for every model
    (DCDR's ``model.steps`` / ``schedule`` / ``beta_*``, GiffCF's ``model.T``, FlowCF's
    ``model.n_steps`` before), DiffRec's start-point noise ``sampling.noise_steps`` (was
    ``sampling.steps``). Today's configs pass unchanged."""
    model, diffusion = raw.get("model", {}), raw.setdefault("diffusion", {})
    sampling = raw.get("sampling", {})
    name = model.get("name")
    moves = {"dcdr": ("steps", "schedule", "beta_min", "beta_max"), "giffcf": ("T",), "flowcf": ("n_steps",)}
    for field in moves.get(name, ()):
        if field in model:
            diffusion["steps" if field in ("T", "n_steps") else field] = model.pop(field)
    if name in ("diffrec", "ldiffrec") and "steps" in sampling and "noise_steps" not in sampling:
        sampling["noise_steps"] = sampling.pop("steps")
    return raw


def _id_maps(config, data_kind: str):
    """The raw-id maps of the run's data (``IdMaps``) or None when ids are the file's own."""
    from diffrec_jax.data.tabular import IdMaps

    d = config.data
    folder = d.get("dir") or ""
    if folder and os.path.isfile(folder):
        folder = os.path.dirname(folder)
    if folder and os.path.isfile(os.path.join(folder, "id_maps.npz")):
        return IdMaps.load(os.path.join(folder, "id_maps.npz"))
    if data_kind == "interactions" and d.get("source") == "movielens":
        from diffrec_jax.data.movielens import load_movielens

        _, users, items = load_movielens(d.get("path") or d.dir, min_rating=d.get("min_rating"),
                                         split=tuple(d.split), return_ids=True)
        return IdMaps(users, items, 0)
    return None


def load(run_dir: str, *, data_dir: str | None = None, seed: int | None = None,
         batch_size: int = 256, data=None) -> "Recommender":
    """Loads a trained run for inference (read-only).

    Args:
      run_dir: a directory written by ``experiments/main.py``.
      data_dir: the dataset folder, when it moved since training (replaces ``config.data.dir``).
      seed: which replica of a several-seed run (``config.num_seeds > 1``); default the first.
      batch_size: rows scored per jitted call (a power of two is best).
      data: an already loaded dataset (skips reading ``config.data``).

    Raises:
      InferenceError: no such run, no checkpoint, a checkpoint that does not match the config,
        a dataset that cannot be read.
    """
    run_dir = os.path.abspath(run_dir)
    if not os.path.isdir(run_dir):
        raise InferenceError(f"{run_dir}: no such run directory")
    config = _load_config(run_dir)
    if data_dir is not None:
        with config.unlocked():
            config.data.dir = os.path.abspath(data_dir)
    task = config.get("task", "interactions")
    if task == "rerank":
        best = os.path.join(run_dir, "best")
        if not os.path.isdir(best) or not any(n.isdigit() for n in os.listdir(best)):
            raise InferenceError(f"{run_dir}: no checkpoint in best/ (a rerank run saves its generator "
                                 "and evaluator there when training ends)")
        return ListRecommender(run_dir, config, best)
    if task not in ("interactions", "sequential"):
        raise InferenceError(f"{run_dir}: unknown task {task!r} in config.json")
    try:
        if data is None:
            from diffrec_jax.data import load

            data = load(config.data)
        maps = _id_maps(config, task)
    except (DataError, OSError) as e:
        raise InferenceError(f"{run_dir}: cannot read the run's dataset: {e}") from None
    seeds = [int(config.seed) + i for i in range(int(config.get("num_seeds", 1) or 1))]
    if seed is None:
        seed = seeds[0]
    if seed not in seeds:
        raise InferenceError(f"{run_dir}: seed {seed} was not trained here (seeds {seeds})")
    best = os.path.join(run_dir, "best") if len(seeds) == 1 else os.path.join(run_dir, "best", f"seed_{seed}")
    if not os.path.isdir(best) or not any(n.isdigit() for n in os.listdir(best)):
        raise InferenceError(
            f"{run_dir}: no checkpoint in {os.path.relpath(best, run_dir)}/ (training ended before "
            "its first evaluation, or the run predates saved closed-form fits: re-run "
            "experiments/main.py with this workdir)")
    cls = Recommender if task == "interactions" else SequenceRecommender
    return cls(run_dir, config, data, maps, best, seed, int(batch_size))


def _keeps_fit(model) -> bool:
    """Whether ``best/`` holds ``{"params", "model_state"}`` (a closed-form fit, or a model that
    owns its epoch and scores with arrays of its state, as DiffKG) rather than the parameters."""
    return bool(getattr(model, "closed_form", False)) or hasattr(model, "train_epoch")


class Recommender:
    """A trained interaction model ready to rank (built by :func:`load`)."""

    task = "interactions"

    def __init__(self, run_dir, config, data, maps, best_dir, seed, batch_size):
        if batch_size < 1:
            raise InferenceError(f"{run_dir}: batch_size must be >= 1, got {batch_size}")
        self.run_dir, self.config, self.data, self.maps = run_dir, config, data, maps
        self.seed, self.batch_size = seed, batch_size
        self._models: dict = {}
        self._fns: dict = {}
        self.model = self._model(None)
        self.params, self.model_state, self.epoch = self._restore(best_dir)

    # -- building ---------------------------------------------------------------------------

    def _build(self, config):
        return model_registry.get_model(config, self.data)

    def _model(self, sampling: dict | None):
        key = tuple(sorted((sampling or {}).items()))
        if key not in self._models:
            config = self.config
            if sampling:
                config = config.copy_and_resolve_references()
                if "sampling" not in config:
                    raise InferenceError(f"{self.run_dir}: model {config.model.name!r} has no sampler to choose")
                with config.unlocked():
                    for name, value in sampling.items():
                        if name not in config.sampling:
                            raise InferenceError(
                                f"{self.run_dir}: sampling.{name} is not a sampler setting of "
                                f"{config.model.name!r} (has {sorted(config.sampling)})")
                        config.sampling[name] = value
            try:
                model = self._build(config)
            except (ValueError, TypeError, KeyError) as e:
                raise InferenceError(f"{self.run_dir}: cannot build {config.model.name!r} from config.json: {e}") from None
            if not _keeps_fit(model):  # init sets the module structure; no arrays made
                self._abstract = jax.eval_shape(lambda: model.init(jax.random.key(0)))
            self._models[key] = model
        return self._models[key]

    def _restore(self, best_dir):
        ck = Checkpointer(best_dir, read_only=True)  # never creates or cleans anything in the run
        try:
            step = ck.latest_step()
            if _keeps_fit(self.model):
                state, meta = ck.restore_untyped(step)
                if not isinstance(state, dict) or set(state) != {"params", "model_state"}:
                    raise InferenceError(f"{self.run_dir}: {best_dir} does not hold a closed-form fit")
                params = jax.tree.map(jnp.asarray, state["params"])
                model_state = jax.tree.map(jnp.asarray, state["model_state"])
                self._check_closed_form(params, model_state, meta, best_dir)
                return params, model_state, step
            _, abstract, _ = self._abstract
            _, _, model_state = self.model.init(jax.random.key(0))  # what training starts from
            try:
                params, _ = ck.restore(step, abstract)
            except Exception as e:  # orbax raises ValueError/KeyError/... on a structure mismatch
                raise InferenceError(
                    f"{self.run_dir}: the checkpoint in {os.path.relpath(best_dir, self.run_dir)}/ "
                    f"(step {step}) does not match config.json's {self.config.model.name!r} model: "
                    f"{type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
            _check_like(params, abstract, self.run_dir)
            return params, model_state, step
        finally:
            ck.close()

    def _check_closed_form(self, params, model_state, meta, best_dir):
        """The fit was made on data of this shape, and the model can score with it."""
        for what, n in (("items", self.n_items), ("users", self.n_users)):
            if f"n_{what}" in meta and int(meta[f"n_{what}"]) != n:
                raise InferenceError(
                    f"{self.run_dir}: the fit in {os.path.relpath(best_dir, self.run_dir)}/ was made on "
                    f"{meta[f'n_{what}']} {what} but the run's data has {n}: the checkpoint does not match its config")
        x = jax.ShapeDtypeStruct((1, self.n_items), jnp.float32)
        keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), 1))
        users = jax.ShapeDtypeStruct((1,), jnp.int32)
        extra = {"user_ids_B": users} if getattr(self.model, "needs_user_ids", False) else {}
        try:
            out = jax.eval_shape(lambda p, s, x, k, **e: self.model.score(p, s, x, k, **e),
                                 params, model_state, x, keys, **extra)
        except Exception as e:  # a fit of another model or another config
            raise InferenceError(
                f"{self.run_dir}: the fit in {os.path.relpath(best_dir, self.run_dir)}/ does not match "
                f"config.json's {self.config.model.name!r} model: {type(e).__name__}: "
                f"{str(e).splitlines()[0][:300]}") from None
        if tuple(out.shape) != (1, self.n_items):
            raise InferenceError(f"{self.run_dir}: the fit scores {out.shape[-1]} items, the data has "
                                 f"{self.n_items}: the checkpoint does not match its config")

    # -- ids --------------------------------------------------------------------------------

    @property
    def n_items(self) -> int:
        return int(self.data.n_items)

    @property
    def n_users(self) -> int:
        return int(self.data.n_users)

    def raw_items(self, idx: np.ndarray) -> np.ndarray:
        return idx if self.maps is None else self.maps.raw_items(idx)

    def _user_maps(self):
        """The id maps when they name this data's users (None: users are the files' rows)."""
        return self.maps

    def _raw_users(self, idx: np.ndarray) -> np.ndarray:
        maps = self._user_maps()
        return idx if maps is None else maps.users[idx]

    def user_index(self, users) -> np.ndarray:
        """Internal row ids of raw user ids (``"all"``: every user)."""
        if isinstance(users, str) and users == "all":
            return np.arange(self.n_users, dtype=np.int64)
        users = np.atleast_1d(np.asarray(users))
        if users.size == 0:
            raise InferenceError(f"{self.run_dir}: no users given")
        maps = self._user_maps()
        if maps is not None:
            try:
                return maps.user_index(users)
            except KeyError as e:
                raise InferenceError(f"{self.run_dir}: {e.args[0]}") from None
        try:
            idx = users.astype(np.int64)
            if users.dtype.kind == "f" and not np.array_equal(idx, users):
                raise ValueError
        except (ValueError, TypeError):
            raise InferenceError(f"{self.run_dir}: user ids are integers 0..{self.n_users - 1} here, "
                                 f"got {users.tolist()[:3]}") from None
        bad = (idx < 0) | (idx >= self.n_users)
        if bad.any():
            raise InferenceError(f"{self.run_dir}: unknown user {users[np.argmax(bad)].item()!r} (the run's "
                                 f"data has users 0..{self.n_users - 1})")
        return idx

    def item_index(self, items) -> np.ndarray:
        """Internal ids of raw item ids; an id the run never saw is an error naming it."""
        items = np.atleast_1d(np.asarray(items))
        lo, hi = self._item_range()
        if self.maps is not None:
            try:
                return self.maps.item_index(items)
            except KeyError as e:
                raise InferenceError(f"{self.run_dir}: {e.args[0]}") from None
        if items.dtype.kind not in "iu":
            try:
                conv = items.astype(np.int64)
                if items.dtype.kind == "f" and not np.array_equal(conv, items):
                    raise ValueError
                items = conv
            except (ValueError, TypeError):
                raise InferenceError(f"{self.run_dir}: item ids are integers {lo}..{hi - 1} here, got "
                                     f"{items.tolist()[:3]}") from None
        bad = (items < lo) | (items >= hi)
        if bad.any():
            raise InferenceError(f"{self.run_dir}: unknown item {items[np.argmax(bad)].item()!r} (the run never "
                                 f"saw it; items are {lo}..{hi - 1})")
        return items.astype(np.int64)

    def _item_range(self) -> tuple[int, int]:
        return 0, self.n_items

    def check_k(self, k) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InferenceError(f"{self.run_dir}: k must be a positive integer, got {k!r}")
        if k > self.n_items:
            raise InferenceError(f"{self.run_dir}: k={k} is larger than the {self.n_items} items of the run's data")
        return int(k)

    def _key(self, seed):
        if seed is None:  # the run's evaluation key (the training tasks split the seed in 3)
            return jax.random.split(jax.random.key(self.seed), 3)[2]
        if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
            return seed
        return jax.random.key(int(seed))

    # -- scoring ----------------------------------------------------------------------------

    def _fn(self, model, k: int):
        """Jitted ``(params, model_state, x_BxI, exclude_BxI, keys_B, users_B) -> (idx, scores)``."""
        cache_key = (id(model), k)
        if cache_key not in self._fns:
            needs_users = getattr(model, "needs_user_ids", False)

            def fn(params, model_state, x, exclude, keys, users):
                if needs_users:
                    s = model.score(params, model_state, x, keys, user_ids_B=users)
                else:
                    s = model.score(params, model_state, x, keys)
                s = metrics_lib.mask_scores(s, exclude)
                idx = metrics_lib.topk_indices(s, k)
                return idx, jnp.take_along_axis(s, idx, axis=1)

            self._fns[cache_key] = jax.jit(fn)
        return self._fns[cache_key]

    def _dense(self, csrs, rows: np.ndarray, width: int) -> np.ndarray:
        out = np.zeros((width, self.n_items), np.float32)
        for csr in csrs:
            for n, u in enumerate(rows):
                a, b = csr.indptr[u], csr.indptr[u + 1]
                out[n, csr.indices[a:b]] = np.maximum(out[n, csr.indices[a:b]], csr.values[a:b])
        return out

    def _run(self, model, k, x, exclude, fold_ids, users, key) -> tuple[np.ndarray, np.ndarray]:
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(fold_ids, jnp.int32))
        idx, sc = self._fn(model, k)(self.params, self.model_state, jnp.asarray(x), jnp.asarray(exclude),
                                     keys, jnp.asarray(users, jnp.int32))
        idx, sc = jax.device_get((idx, sc))
        return np.asarray(idx), np.asarray(sc)

    def iter_recommend(self, users="all", k: int = 20, *, exclude_seen: bool | str = True, seed=None,
                       sampling: dict | None = None, batch_size: int | None = None) -> Iterator[Recommendations]:
        """:meth:`recommend` in batches (for exports that never hold all lists at once)."""
        k = self.check_k(k)
        rows = self.user_index(users)
        if exclude_seen not in (True, False, "all"):
            raise InferenceError(f"{self.run_dir}: exclude_seen must be True, False or 'all', got {exclude_seen!r}")
        model = self._model(sampling)
        key = self._key(seed)
        bs = int(batch_size or self.batch_size)
        held_out = [self.data.valid, self.data.test] if exclude_seen == "all" else []
        for start in range(0, len(rows), bs):
            chunk = rows[start:start + bs]
            width = batch_bucket(len(chunk), bs)
            padded = np.zeros(width, np.int64)
            padded[: len(chunk)] = chunk
            x = self._dense([self.data.train], padded, width)
            ex = (x > 0) if exclude_seen is not False else np.zeros(x.shape, bool)
            if held_out:
                ex |= self._dense(held_out, padded, width) > 0
            idx, sc = self._run(model, k, x, ex, padded, padded, key)
            n = len(chunk)
            yield Recommendations(self.raw_items(idx[:n]), sc[:n], self._raw_users(chunk))

    def recommend(self, users="all", k: int = 20, *, exclude_seen: bool | str = True, seed=None,
                  sampling: dict | None = None) -> Recommendations:
        """Top-``k`` items for users of the training data.

        Args:
          users: raw user ids (one or a list) or ``"all"``.
          k: list length (at most the number of items).
          exclude_seen: True: never recommend an item of the user's training row (the evaluation's
            validation masking); ``"all"``: nor one of their validation or test items; False:
            rank everything.
          seed: None (the run's evaluation key: the evaluation's own lists), an int or a key.
          sampling: sampler settings for this call, e.g. ``{"noise_steps": 10, "noise": True}``.
        """
        return Recommendations.concatenate(list(self.iter_recommend(
            users, k, exclude_seen=exclude_seen, seed=seed, sampling=sampling)))

    def _history_rows(self, histories) -> list[np.ndarray]:
        if isinstance(histories, np.ndarray) and histories.ndim == 2:
            histories = list(histories)
        if not isinstance(histories, (list, tuple)) or not histories:
            raise InferenceError(f"{self.run_dir}: histories must be a non-empty list of histories")
        return list(histories)

    def recommend_histories(self, histories, k: int = 20, *, exclude_seen: bool = True, seed=0,
                            sampling: dict | None = None, row_ids=None) -> Recommendations:
        """Top-``k`` items for interaction histories given by the caller.

        Args:
          histories: a list; each entry is a list of raw item ids, oldest first (T-DiffRec runs
            weight them by position as their training rows were), or a dense ``[n_items]``
            vector of interaction values (0 = none).
          exclude_seen: never recommend an item of the given history.
          seed: an int or a key; row ``n`` uses ``fold_in(key, row_ids[n])``.
          row_ids: ints selecting each row's randomness (default ``0..N-1``; the server passes 0,
            so a request's answer does not depend on what it was batched with).
        """
        model = self._model(sampling)
        if not self.accepts_histories():
            raise InferenceError(
                f"{self.run_dir}: {self.config.model.name!r} learns one embedding per training user and "
                "cannot score a new history; use recommend(users) for known users")
        k = self.check_k(k)
        rows = self._history_rows(histories)
        x = np.zeros((len(rows), self.n_items), np.float32)
        tw = self.config.data.get("time_weights")
        for n, h in enumerate(rows):
            h = np.asarray(h)
            if h.ndim == 1 and h.shape[0] == self.n_items and h.dtype.kind == "f":
                if not np.all(np.isfinite(h)) or (h < 0).any():
                    raise InferenceError(f"{self.run_dir}: history {n}: a dense vector needs finite values >= 0")
                x[n] = h
            else:
                if h.size > MAX_HISTORY:
                    raise InferenceError(f"{self.run_dir}: history {n} has {h.size} items (limit {MAX_HISTORY})")
                if h.size:
                    idx = self.item_index(h)
                    # as training saw the rows: T-DiffRec's linspace(w_min, w_max) weights by order
                    w = np.ones(idx.size, np.float32) if not tw else np.linspace(
                        float(tw[0]), float(tw[1]), idx.size, dtype=np.float32) if idx.size > 1 else \
                        np.full(1, float(tw[0]), np.float32)
                    x[n, idx] = w  # a repeated item keeps its latest weight
            if not (x[n] > 0).any():
                raise InferenceError(f"{self.run_dir}: history {n} is empty")
        key = self._key(seed)
        row_ids = _row_ids(row_ids, len(rows), self.run_dir)
        bs = self.batch_size
        parts_i, parts_s = [], []
        for start in range(0, len(rows), bs):
            xb = x[start:start + bs]
            width = batch_bucket(len(xb), bs)
            xp = np.zeros((width, self.n_items), np.float32)
            xp[: len(xb)] = xb
            ids = np.zeros(width, np.int64)
            ids[: len(xb)] = row_ids[start:start + len(xb)]
            idx, sc = self._run(model, k, xp, (xp > 0) if exclude_seen else np.zeros_like(xp), ids,
                                np.zeros(width, np.int64), key)
            parts_i.append(idx[: len(xb)])
            parts_s.append(sc[: len(xb)])
        return Recommendations(self.raw_items(np.concatenate(parts_i)), np.concatenate(parts_s))

    def raw_user(self, row: int):
        """The dataset's id of internal user row ``row``."""
        return self._raw_users(np.asarray([row]))[0]

    def has_users(self) -> bool:
        """Whether :meth:`recommend` can name users (sequential runs on sessions cannot)."""
        return True

    def accepts_histories(self) -> bool:
        """Whether :meth:`recommend_histories` works (not for per-user embedding models)."""
        return not getattr(self.model, "needs_user_ids", False)

    def probe_history(self) -> list:
        """A valid one-item history in the dataset's ids (for warm-ups and examples)."""
        return [self.raw_items(np.asarray([self._item_range()[0]]))[0]]

    def describe(self) -> dict:
        """What was loaded (for logs, the command and the server's ``/health``)."""
        return {"run": self.run_dir, "task": self.task, "model": self.config.model.name,
                "dataset": getattr(self.data, "name", None), "items": self.n_items,
                "epoch": self.epoch, "seed": self.seed, "raw_ids": self.maps is not None}


class SequenceRecommender(Recommender):
    """A trained next-item model (SASRec, DreamRec, DiffuRec) ready to rank."""

    task = "sequential"

    def _build(self, config):
        from diffrec_jax import models
        from diffrec_jax.training import sequences

        sequences.validate_config(config, self.data)
        return models.get_model(config, self.data)

    @property
    def n_users(self) -> int:
        return len(self.data.test)

    def _item_range(self):
        return self.data.item_ids

    def has_users(self) -> bool:
        d = self.config.data
        if d.source == "diffurec_npz":
            return True
        return d.source == "synthetic_seq" and d.synthetic_seq.get("layout", "loo") == "loo"

    def _fn(self, model, k: int):
        cache_key = (id(model), k)
        if cache_key not in self._fns:
            pad = int(self.data.pad_id)

            def fn(params, model_state, seq, lengths, exclude, keys):
                batch = {"seq": seq, "len": lengths, "target": jnp.full(lengths.shape, pad, jnp.int32)}
                s = model.score(params, model_state, batch, keys)
                s = s.at[:, pad].set(-jnp.inf)
                s = jnp.where(exclude, -jnp.inf, s)
                idx = metrics_lib.topk_indices(s, k)
                return idx, jnp.take_along_axis(s, idx, axis=1)

            self._fns[cache_key] = jax.jit(fn)
        return self._fns[cache_key]

    def _pack(self, seqs: list[np.ndarray], width: int):
        """Pads histories (internal ids, oldest first) the way the run's data does."""
        L, pad = int(self.data.max_len), int(self.data.pad_id)
        out = np.full((width, L), pad, np.int32)
        lengths = np.zeros(width, np.int32)
        for n, s in enumerate(seqs):
            s = s[-L:]
            lengths[n] = len(s)
            if self.data.pad_side == "left":
                out[n, L - len(s):] = s
            else:
                out[n, : len(s)] = s
        return out, lengths

    def _score_seqs(self, model, seqs, k, exclude_seen, fold_ids, key):
        bs = self.batch_size
        parts_i, parts_s = [], []
        V = int(self.data.num_embeddings)
        for start in range(0, len(seqs), bs):
            chunk = seqs[start:start + bs]
            width = batch_bucket(len(chunk), bs)
            seq, lengths = self._pack(chunk, width)
            ex = np.zeros((width, V), bool)
            if exclude_seen:
                for n, s in enumerate(chunk):
                    ex[n, s] = True
            ids = np.zeros(width, np.int64)
            ids[: len(chunk)] = fold_ids[start:start + len(chunk)]
            keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(ids, jnp.int32))
            idx, sc = self._fn(model, k)(self.params, self.model_state, jnp.asarray(seq), jnp.asarray(lengths),
                                         jnp.asarray(ex), keys)
            idx, sc = jax.device_get((idx, sc))
            parts_i.append(np.asarray(idx)[: len(chunk)])
            parts_s.append(np.asarray(sc)[: len(chunk)])
        return np.concatenate(parts_i), np.concatenate(parts_s)

    def _known_sequence(self, u: int) -> np.ndarray:
        t = self.data.test
        row = t.seq[u]
        real = row[row != self.data.pad_id] if self.data.pad_side == "left" else row[: t.lengths[u]]
        return np.concatenate([real, [t.targets[u]]]).astype(np.int64)

    def iter_recommend(self, users="all", k: int = 20, *, exclude_seen: bool | str = False, seed=None,
                       sampling: dict | None = None, batch_size: int | None = None):
        """Next items for users of a leave-one-out dataset, from each user's whole known sequence
        (training items, then the validation and test items; the last ``max_len`` of them).

        ``exclude_seen`` (default False, as the evaluation: items may repeat) drops items of the
        sequence from the lists.
        """
        if not self.has_users():
            raise InferenceError(
                f"{self.run_dir}: the run's data ({self.config.data.source}) holds sessions, not users; "
                "use recommend_histories")
        k = self.check_k(k)
        rows = self.user_index(users)
        model = self._model(sampling)
        key = self._key(seed)
        bs = int(batch_size or self.batch_size)
        for start in range(0, len(rows), bs):
            chunk = rows[start:start + bs]
            seqs = [self._known_sequence(int(u)) for u in chunk]
            idx, sc = self._score_seqs(model, seqs, k, bool(exclude_seen), chunk, key)
            yield Recommendations(self.raw_items(idx), sc, self._raw_users(chunk))

    def _user_maps(self):
        # to_sequences' maps name one user per leave-one-out row; session data has none
        m = self.maps
        return m if m is not None and m.users.shape[0] == self.n_users else None

    def recommend(self, users="all", k: int = 20, *, exclude_seen: bool | str = False, seed=None,
                  sampling: dict | None = None) -> Recommendations:
        return Recommendations.concatenate(list(self.iter_recommend(
            users, k, exclude_seen=exclude_seen, seed=seed, sampling=sampling)))

    def recommend_histories(self, histories, k: int = 20, *, exclude_seen: bool = False, seed=0,
                            sampling: dict | None = None, row_ids=None) -> Recommendations:
        """Next items after each ordered history (raw item ids, oldest first).

        Histories longer than the run's ``max_len`` keep their most recent ``max_len`` items when
        the run's data did (``data.on_long="truncate"``) and are refused otherwise.
        """
        k = self.check_k(k)
        model = self._model(sampling)
        rows = self._history_rows(histories)
        L = int(self.data.max_len)
        on_long = self.config.data.get("on_long") or "truncate"
        seqs = []
        for n, h in enumerate(rows):
            h = np.asarray(h)
            if h.ndim != 1:
                raise InferenceError(f"{self.run_dir}: history {n} must be a list of item ids")
            if h.size == 0:
                raise InferenceError(f"{self.run_dir}: history {n} is empty")
            if h.size > MAX_HISTORY or (h.size > L and on_long == "error"):
                lim = MAX_HISTORY if h.size > MAX_HISTORY else L
                raise InferenceError(f"{self.run_dir}: history {n} has {h.size} items (limit {lim})")
            seqs.append(self.item_index(h))
        idx, sc = self._score_seqs(model, seqs, k, exclude_seen, _row_ids(row_ids, len(seqs), self.run_dir),
                                   self._key(seed))
        return Recommendations(self.raw_items(idx), sc)


class ListRecommender:
    """A trained DCDR run (``task="rerank"``): generates a list from each request's candidates.

    The run's world (users, items, histories) is regenerated from its ``config.data`` (seeded),
    so users and items are the world's ids.
    """

    task = "rerank"

    def __init__(self, run_dir, config, best_dir):
        from diffrec_jax.data import load
        from diffrec_jax.models import dcdr

        self.run_dir, self.config = run_dir, config
        try:
            dcdr.DCDR.validate_config(config)
            self.world = load(config.data)
            self.model = dcdr.DCDR(config, self.world)
            self.evaluator = dcdr.ListEvaluator(config, self.world)
        except (ValueError, TypeError, KeyError) as e:
            raise InferenceError(f"{run_dir}: cannot build DCDR from config.json: {e}") from None
        abstract = {"dcdr": jax.eval_shape(lambda: self.model.init(jax.random.key(0)))[1],
                    "evaluator": jax.eval_shape(lambda: self.evaluator.init(jax.random.key(0)))[1]}
        ck = Checkpointer(best_dir, read_only=True)
        try:
            self.epoch = ck.latest_step()
            try:
                state, _ = ck.restore(self.epoch, abstract)
            except Exception as e:
                raise InferenceError(f"{run_dir}: the checkpoint in best/ does not match config.json's DCDR: "
                                     f"{type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
        finally:
            ck.close()
        _check_like(state, abstract, run_dir)
        self.params, self.eparams = state["dcdr"], state["evaluator"]
        self._logits = jax.jit(self.evaluator.logits)

    @property
    def n(self) -> int:
        """Candidates per request."""
        return int(self.world.n)

    def rerank(self, users, candidates, *, initial=None, condition: str | None = None, seed=None) -> Recommendations:
        """The DCDR list for each request.

        Args:
          users: ``[R]`` user ids of the world.
          candidates: ``[R, n]`` distinct item ids per request, in the ranking stage's order.
          initial: ``[R, n]`` the initial list as positions into ``candidates`` (default: their
            order).
          condition: the response condition (``all_positive``, ``all_negative``, ``top_k``;
            default the run's ``infer.condition``).
          seed: the sampler seed (default the run's ``infer.seed``).

        Returns:
          ``items [R, n]`` the generated list, ``scores [R, n]`` the evaluator's click probability
          of each slot.
        """
        from diffrec_jax.models import dcdr
        from diffrec_jax.training import rerank

        w, run = self.world, self.run_dir
        users = np.atleast_1d(np.asarray(users))
        cands = np.asarray(candidates)
        if cands.ndim != 2 or cands.shape != (users.shape[0], self.n):
            raise InferenceError(f"{run}: candidates must be [{users.shape[0]}, {self.n}] (one row of "
                                 f"{self.n} items per user), got shape {list(cands.shape)}")
        if users.dtype.kind not in "iu" or cands.dtype.kind not in "iu":
            raise InferenceError(f"{run}: user and item ids are integers here")
        if ((users < 0) | (users >= w.n_users)).any():
            raise InferenceError(f"{run}: unknown user {users[(users < 0) | (users >= w.n_users)][0].item()!r} "
                                 f"(users are 0..{w.n_users - 1})")
        if ((cands < 0) | (cands >= w.n_items)).any():
            raise InferenceError(f"{run}: unknown item {cands[(cands < 0) | (cands >= w.n_items)][0].item()!r} "
                                 f"(items are 0..{w.n_items - 1})")
        if any(len(set(r.tolist())) != self.n for r in cands):
            raise InferenceError(f"{run}: a request lists the same candidate twice")
        init = np.tile(np.arange(self.n, dtype=np.int32), (len(users), 1)) if initial is None else np.asarray(initial)
        if init.shape != cands.shape or any(sorted(r.tolist()) != list(range(self.n)) for r in init):
            raise InferenceError(f"{run}: initial must be a permutation of 0..{self.n - 1} per request")
        cond = condition or self.config.infer.get("condition", "all_positive")
        if cond not in rerank.CONDITIONS or cond == "observed":
            raise InferenceError(f"{run}: condition must be one of "
                                 f"{[c for c in rerank.CONDITIONS if c != 'observed']} (a request has no "
                                 f"observed responses), got {cond!r}")
        arrays = {"user": jnp.asarray(users, jnp.int32), "cands": jnp.asarray(cands, jnp.int32),
                  "hist": jnp.asarray(w.history[users]), "init": jnp.asarray(init, jnp.int32)}
        if bool(self.config.get("init_rank_feature", True)):
            arrays["rank"] = dcdr.init_rank(arrays["init"])
        icfg = self.config.infer
        if seed is not None:
            icfg = icfg.copy_and_resolve_references()
            with icfg.unlocked():
                icfg.seed = int(seed)
        out = rerank.generate_lists(self.model, self.params, self.evaluator, self.eparams, arrays,
                                    len(users), cond, icfg)
        lists = out["lists"]
        ctx = dcdr.Context(arrays["user"], arrays["cands"], arrays["hist"], arrays.get("rank"))
        probs = jax.nn.sigmoid(self._logits(self.eparams, ctx, jnp.asarray(lists))[:, :, 0])
        return Recommendations(np.take_along_axis(cands, lists, 1), np.asarray(probs, np.float32), users)

    def describe(self) -> dict:
        return {"run": self.run_dir, "task": self.task, "model": "dcdr", "candidates": self.n,
                "users": int(self.world.n_users), "items": int(self.world.n_items), "epoch": self.epoch}


def _row_ids(row_ids, n: int, run_dir: str) -> np.ndarray:
    if row_ids is None:
        return np.arange(n, dtype=np.int64)
    row_ids = np.asarray(row_ids, np.int64).reshape(-1)
    if row_ids.shape[0] != n:
        raise InferenceError(f"{run_dir}: {row_ids.shape[0]} row_ids for {n} histories")
    return row_ids


def _check_like(params, abstract, run_dir: str) -> None:
    got = jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), params)
    want = jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), abstract)
    if got != want:
        raise InferenceError(f"{run_dir}: the checkpoint's parameter shapes do not match config.json's model")
