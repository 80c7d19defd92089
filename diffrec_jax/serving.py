"""An HTTP endpoint over a loaded run (Starlette app, served by uvicorn; ``pip install -e ".[serve]"``).

Routes:

* ``POST /recommend`` with ``{"history": [raw item ids], "k": 10}`` or ``{"user": raw user id,
  "k": 10}`` (optional ``"exclude_seen"``) answers ``{"items": [...], "scores": [...]}``;
* ``GET /health`` answers 200 with what was loaded once every scorer is compiled (503 before).

Bad input (unknown user or item, empty or over-long history, bad ``k``, malformed JSON) gets a 4xx
with ``{"error": message}`` naming the run and the problem; a body over ``max_body_bytes`` gets
413 before it is parsed. The server keeps serving after any of them.

Concurrent requests are batched: a single worker takes every request waiting in the queue (up
to ``max_batch``, after at most ``batch_wait_ms``), scores them in one jitted call per kind, and
answers each. Every request is scored with its own randomness (``fold_in(key(seed), 0)`` for a
history, ``fold_in(key, user)`` for a user), so its answer does not depend on what it was
batched with: the same as ``recommend_histories([h], k, seed=seed)`` / ``recommend([u], k)``.
Lists are computed with ``K = max_k`` and cut to each request's ``k``, so one program per batch
bucket is compiled at start-up and none while serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import numpy as np

from diffrec_jax.inference import MAX_HISTORY, InferenceError, Recommender, batch_bucket

__all__ = ["make_app"]


def _jsonable(a: np.ndarray) -> list:
    return [x.item() if hasattr(x, "item") else x for x in a]


class _Batcher:
    """Collects requests and scores each kind's in one batched call on a worker thread."""

    def __init__(self, rec: Recommender, max_k: int, max_batch: int, wait_s: float, seed: int):
        self.rec, self.max_k, self.max_batch, self.wait_s, self.seed = rec, max_k, max_batch, wait_s, seed
        self.queue: asyncio.Queue | None = None
        self.task = None

    def score(self, kind: str, items: list, exclude: list) -> list:
        """Scores one batch of one kind (runs on the worker thread): ``(items, scores)`` each."""
        rec = self.rec
        groups: dict = {}
        for n, ex in enumerate(exclude):
            groups.setdefault(ex, []).append(n)
        out = [None] * len(items)
        for ex, members in groups.items():
            batch = [items[n] for n in members]
            if kind == "user":
                res = rec.recommend(batch, self.max_k, exclude_seen=ex)
            else:
                res = rec.recommend_histories(batch, self.max_k, exclude_seen=ex, seed=self.seed,
                                              row_ids=np.zeros(len(members), np.int64))
            for n, i, s in zip(members, res.items, res.scores):
                out[n] = (i, s)
        return out

    async def run(self):
        assert self.queue is not None
        while True:
            batch = [await self.queue.get()]
            if self.wait_s > 0 and self.queue.empty():
                await asyncio.sleep(self.wait_s)  # let concurrent requests join this batch
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            for kind in ("user", "history"):
                jobs = [j for j in batch if j[0] == kind]
                if not jobs:
                    continue
                try:
                    results = await asyncio.to_thread(self.score, kind, [j[1] for j in jobs], [j[2] for j in jobs])
                except Exception as e:  # requests are checked before they are queued; just in case
                    for j in jobs:
                        if not j[3].done():
                            j[3].set_exception(e)
                    continue
                for j, r in zip(jobs, results):
                    if not j[3].done():
                        j[3].set_result(r)

    async def submit(self, kind: str, payload: Any, exclude) -> tuple:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((kind, payload, exclude, fut))
        return await fut


def _warm_up(rec: Recommender, max_k: int, max_batch: int, seed) -> None:
    """Compiles every scorer the server can call (each batch bucket, each kind) before /health."""
    sizes = sorted({batch_bucket(n, max_batch) for n in range(1, max_batch + 1)})
    probe_user = rec.raw_user(0)
    for n in sizes:
        if rec.has_users():
            for ex in (True, False):
                rec.recommend([probe_user] * n, max_k, exclude_seen=ex)
        if rec.accepts_histories():
            h = rec.probe_history()
            for ex in (True, False):
                rec.recommend_histories([h] * n, max_k, exclude_seen=ex, seed=seed,
                                        row_ids=np.zeros(n, np.int64))


def make_app(rec: Recommender, *, max_body_bytes: int = 64 * 1024, max_batch: int = 64,
             batch_wait_ms: float = 2.0, max_k: int = 100, seed: int = 0, warm_up: bool = True):
    """The Starlette application serving ``rec``.

    Args:
      rec: a loaded run (:func:`diffrec_jax.inference.load`); its ``batch_size`` should be at
        least ``max_batch``.
      max_body_bytes: larger request bodies are refused with 413.
      max_batch: most requests scored together.
      batch_wait_ms: how long the worker waits for more requests after the first.
      max_k: largest ``k`` a request may ask (capped at the item count).
      seed: the samplers' seed for histories (users always use the run's evaluation key).
      warm_up: compile every scorer before ``/health`` answers 200.
    """
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    max_k = int(min(max_k, rec.n_items))
    rec.batch_size = max(rec.batch_size, int(max_batch))
    batcher = _Batcher(rec, max_k, int(max_batch), batch_wait_ms / 1000.0, seed)
    state = {"ready": False, "started": time.time()}
    run = rec.run_dir

    def error(status: int, msg: str):
        return JSONResponse({"error": msg}, status_code=status)

    async def health(request):
        if not state["ready"]:
            return JSONResponse({"status": "compiling", **rec.describe()}, status_code=503)
        return JSONResponse({"status": "ok", "max_k": max_k, "max_batch": max_batch, **rec.describe()})

    async def read_body(request) -> bytes | None:
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > max_body_bytes):
            return None
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > max_body_bytes:
                return None
        return bytes(body)

    async def recommend(request):
        if not state["ready"]:
            return error(503, f"{run}: still compiling; retry when GET /health answers 200")
        try:
            body = await read_body(request)
        except ClientDisconnect:
            return error(400, "client disconnected")
        if body is None:
            return error(413, f"{run}: request body larger than {max_body_bytes} bytes")
        try:
            req = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error(400, f"{run}: request is not valid JSON ({e})")
        if not isinstance(req, dict):
            return error(400, f"{run}: request must be a JSON object with 'history' or 'user'")
        unknown = set(req) - {"history", "user", "k", "exclude_seen"}
        if unknown:
            return error(400, f"{run}: unknown request field(s) {sorted(unknown)}")
        if ("history" in req) == ("user" in req):
            return error(400, f"{run}: give exactly one of 'history' (a list of item ids) or 'user'")
        k = req.get("k", 10)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
            return error(400, f"{run}: k must be an integer in 1..{max_k}, got {k!r}")
        exclude = req.get("exclude_seen", rec.task == "interactions")
        if exclude not in (True, False):
            return error(400, f"{run}: exclude_seen must be true or false")
        try:
            if "history" in req:
                h = req["history"]
                if not isinstance(h, list) or not all(isinstance(x, (int, str)) and not isinstance(x, bool) for x in h):
                    return error(400, f"{run}: history must be a list of item ids")
                if not h:
                    return error(400, f"{run}: history is empty")
                if len(h) > MAX_HISTORY:
                    return error(400, f"{run}: history has {len(h)} items (limit {MAX_HISTORY})")
                if not rec.accepts_histories():
                    return error(400, f"{run}: {rec.config.model.name!r} scores known users only; send 'user'")
                rec.item_index(np.asarray(h))  # unknown items: answered here, not in the batch
                items, scores = await batcher.submit("history", h, bool(exclude))
            else:
                u = req["user"]
                if isinstance(u, bool) or not isinstance(u, (int, str)):
                    return error(400, f"{run}: user must be an id (integer or string)")
                if not rec.has_users():
                    return error(400, f"{run}: the run's data holds sessions, not users; send 'history'")
                rec.user_index([u])
                items, scores = await batcher.submit("user", u, bool(exclude))
        except InferenceError as e:
            return error(404 if "unknown user" in str(e) else 400, str(e))
        return JSONResponse({"items": _jsonable(items[:k]), "scores": [float(s) for s in scores[:k]]})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.queue = asyncio.Queue()

        async def prepare():  # the server answers (503) while this compiles
            if warm_up:
                await asyncio.to_thread(_warm_up, rec, max_k, int(max_batch), seed)
            batcher.task = asyncio.create_task(batcher.run())
            state["ready"] = True

        preparing = asyncio.create_task(prepare())
        try:
            yield
        finally:
            preparing.cancel()
            if batcher.task is not None:
                batcher.task.cancel()

    return Starlette(routes=[Route("/health", health, methods=["GET"]),
                             Route("/recommend", recommend, methods=["POST"])],
                     lifespan=lifespan)
