"""Orbax checkpointing (the only module that imports orbax).

A checkpoint holds two items: ``state`` (the train-state pytree, saved with ``StandardSave``) and
``meta`` (JSON: epoch, best metrics, early-stopping bookkeeping). Together with data order and
PRNG keys that are pure functions of ``(seed, epoch, step)``, they make resume exact.

Reliability:

* Saves are atomic: Orbax writes each step into a ``<step>.orbax-checkpoint-tmp-*`` directory and
  renames it to ``<step>`` only once every item is written (``AtomicityMode.ATOMIC_RENAME``, set
  explicitly rather than left to ``AUTO``). A process killed mid-save leaves only a temporary
  directory, which is never listed as a step and is removed when the next
  :class:`Checkpointer` opens the directory (``cleanup_tmp_directories``).
* Every save stores a SHA-256 digest of the state's arrays (dtype, shape and bytes of each
  leaf, in tree order) and of the rest of ``meta`` under ``meta["_integrity"]``;
  :meth:`Checkpointer.restore` recomputes and compares them. Orbax/TensorStore already refuse
  missing or truncated files and most garbage, but a flipped byte inside a compressed chunk
  decompresses silently to other numbers; the digest catches that. (Checkpoints written without
  a digest restore unverified.)
* :meth:`Checkpointer.restore_latest` tries steps newest first. A step that fails to restore
  (missing or truncated files, garbage array data, bad JSON, a digest mismatch) is logged as a
  warning naming the step and the error, and the previous step is tried; once one restores, the
  failed newer steps are moved aside into ``<directory>.corrupt/`` (kept for inspection, out of
  the manager's way). If none restores, :class:`CheckpointError` is raised.
* :meth:`Checkpointer.save` always writes: a step that already exists (left by an interrupted
  run that is now redoing that epoch) is replaced instead of being skipped by Orbax's
  ``should_save`` rule.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("diffrec_jax.checkpointing")

_INTEGRITY = "_integrity"  # meta key holding the digests (stripped on restore)


class CheckpointError(RuntimeError):
    """Checkpoints exist but none of them can be restored (the message lists each failure)."""


class CheckpointIntegrityError(ValueError):
    """A restored checkpoint does not match the digest written with it."""


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` with ``state`` + ``meta`` items.

    Args:
      directory: where the step directories live (created unless ``read_only``).
      max_to_keep: number of most recent steps kept.
      read_only: only restore: nothing is created, cleaned or written (inference on a run).
    """

    def __init__(self, directory: str, *, max_to_keep: int = 2, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        if read_only:
            self.manager = ocp.CheckpointManager(
                self.directory, options=ocp.CheckpointManagerOptions(create=False, read_only=True),
                item_names=("state", "meta"))
            return
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=True,
                cleanup_tmp_directories=True,
                atomicity_options=ocp.options.AtomicityOptions(
                    mode=ocp.options.AtomicityMode.ATOMIC_RENAME
                ),
                # several processes: synchronous saves, and each manager's barriers get their own
                # names (a run has several managers saving the same step: checkpoints/, best/seed_<s>/)
                enable_async_checkpointing=jax.process_count() == 1,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix=hashlib.sha256(self.directory.encode()).hexdigest()[:16]
                ),
            ),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> int | None:
        """The newest finalized step (it may still fail to restore; see :meth:`restore_latest`)."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """All finalized steps, ascending."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Saves ``(state, meta)`` as ``step`` (asynchronously; atomic on completion).

        A step directory that already exists is deleted first: it was written by an interrupted
        run that is now redoing that epoch (or it failed to restore), and Orbax would otherwise
        skip the save because ``step`` is not newer than its latest step.
        """
        if _INTEGRITY in meta:
            raise ValueError(f"meta key {_INTEGRITY!r} is reserved for the checkpoint digests")
        digests = {"state_sha256": _state_digest(state), "meta_sha256": _meta_digest(meta)}
        meta = {**meta, _INTEGRITY: digests}
        self.manager.wait_until_finished()
        if step in self.manager.all_steps():
            log.info("replacing existing checkpoint step %d in %s", step, self.directory)
            self.manager.delete(step)
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores ``(state, meta)`` at ``step``; ``abstract_state`` gives structure and dtypes.

        Raises:
          CheckpointIntegrityError: the content does not match the digest saved with it.
        """
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        state, meta = out["state"], out["meta"]
        if not isinstance(meta, dict):
            raise CheckpointIntegrityError(
                f"step {step}: meta is a {type(meta).__name__}, not a dict"
            )
        meta = dict(meta)
        digests = meta.pop(_INTEGRITY, None)
        if digests is not None:
            if not isinstance(digests, dict):
                raise CheckpointIntegrityError(f"step {step}: malformed {_INTEGRITY!r} entry")
            if digests.get("meta_sha256") != _meta_digest(meta):
                raise CheckpointIntegrityError(f"step {step}: meta does not match its digest")
            if digests.get("state_sha256") != _state_digest(state):
                raise CheckpointIntegrityError(
                    f"step {step}: state arrays do not match their digest (corrupted array data)"
                )
        return state, meta

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """Restores the newest step that restores cleanly: ``(step, state, meta)``.

        Steps are tried newest first. Any failure (missing files, truncated or garbage array data,
        bad JSON, a digest mismatch) makes this log a warning naming the step and the error, and
        try the previous step; once one restores, the failed newer steps are moved aside into
        ``<directory>.corrupt/`` so that training can write those steps again.

        Args:
          abstract_state: the state's structure, shapes and dtypes (e.g. ``jax.eval_shape``).

        Returns:
          ``(step, state, meta)``, or None when there is no checkpoint at all.

        Raises:
          CheckpointError: steps exist but none restores (nothing is moved aside then).
        """
        self.manager.wait_until_finished()
        self.manager.reload()
        steps = sorted(self.manager.all_steps(), reverse=True)
        failed: list[tuple[int, str]] = []
        for step in steps:
            try:
                state, meta = self.restore(step, abstract_state)
            except Exception as e:  # noqa: BLE001 - any failure means "this step is unusable"
                err = f"{type(e).__name__}: {str(e)[:500]}"
                log.warning(
                    "checkpoint step %d in %s cannot be restored (%s); falling back to the "
                    "previous step", step, self.directory, err,
                )
                failed.append((step, err))
                continue
            for bad, _ in failed:
                self._quarantine(bad)
            return step, state, meta
        if failed:
            listing = "; ".join(f"step {s}: {e}" for s, e in failed)
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be restored ({listing}); move or delete "
                f"the directory to start over"
            )
        return None

    def _quarantine(self, step: int) -> None:
        """Moves step ``step`` out of the managed directory into ``<directory>.corrupt/``."""
        src = os.path.join(self.directory, str(step))
        if not os.path.isdir(src):
            self.manager.reload()
            return
        dest_root = self.directory.rstrip(os.sep) + ".corrupt"
        os.makedirs(dest_root, exist_ok=True)
        dest = os.path.join(dest_root, f"{step}.{time.strftime('%Y%m%d-%H%M%S')}.{os.getpid()}")
        try:
            shutil.move(src, dest)
            log.warning("moved unrestorable checkpoint step %d to %s", step, dest)
        except OSError as e:  # keep going: save() replaces the step when training reaches it
            log.warning("could not move unrestorable checkpoint step %d aside: %s", step, e)
        self.manager.reload()

    def restore_untyped(self, step: int | None = None) -> tuple[Any, dict]:
        """Restores ``(state, meta)`` without a target: nested dicts of arrays, as saved.

        Useful to inspect a run or to load the best parameters without rebuilding the model.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
        )
        meta = dict(out["meta"])
        meta.pop(_INTEGRITY, None)
        return out["state"], meta

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are finalized."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def _state_digest(state: Any) -> str:
    """SHA-256 over (dtype, shape, bytes) of every leaf of ``state``, in tree order."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(state)):
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            leaf = jax.device_get(jax.random.key_data(leaf))
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{arr.dtype.str}{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _meta_digest(meta: dict) -> str:
    """SHA-256 of ``meta`` as canonical JSON (sorted keys; the integrity entry excluded)."""
    body = {k: v for k, v in meta.items() if k != _INTEGRITY}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
