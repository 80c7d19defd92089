"""Part 4, ``topk``: top-k over 1e4 .. 1e6 items: ``lax.top_k``, the library's exact chunked
top-k, ``lax.approx_max_k`` (with its measured recall) and a streamed top-k that never holds the
``[B, I]`` scores.
"""

from __future__ import annotations

import gc
import math
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffrec_jax import metrics

from .common import MB, block, time_repeats


def topk_recall(approx_idx, exact_idx) -> float:
    """Mean over rows of ``|approx_row ∩ exact_row| / k`` (the recall of an approximate top-k).

    Args:
      approx_idx: ``[B, k]`` item indices from the approximate method.
      exact_idx: ``[B, k]`` item indices of the exact top-k.
    """
    a = np.asarray(approx_idx)
    e = np.asarray(exact_idx)
    if a.shape != e.shape or a.ndim != 2:
        raise ValueError(f"expected two [B, k] arrays of one shape, got {a.shape} and {e.shape}")
    k = e.shape[1]
    return float(np.mean([np.intersect1d(a[r], e[r]).size / k for r in range(e.shape[0])]))


def streamed_topk(h_BxH, w_chunks, b_chunks, k: int):
    """Exact top-k of ``h W + b`` without the ``[B, I]`` scores: a scan over item chunks.

    Args:
      h_BxH: ``[B, H]`` last hidden activations.
      w_chunks: ``[C, H, chunk]`` the output kernel split into ``C`` item chunks (zero-padded).
      b_chunks: ``[C, chunk]`` the bias, padded with ``-inf`` so padding never ranks.
      k: list length (``k <= chunk``).

    Returns:
      ``[B, k]`` int32 item indices, best first.
    """
    bsz, chunk = h_BxH.shape[0], w_chunks.shape[-1]

    def body(carry, inp):
        vals, idx = carry
        w, b, off = inp
        v, i = jax.lax.top_k(h_BxH @ w + b, k)
        allv = jnp.concatenate([vals, v], axis=1)
        alli = jnp.concatenate([idx, i.astype(jnp.int32) + off], axis=1)
        top_v, pos = jax.lax.top_k(allv, k)
        return (top_v, jnp.take_along_axis(alli, pos, axis=1)), None

    init = (jnp.full((bsz, k), -jnp.inf, h_BxH.dtype), jnp.zeros((bsz, k), jnp.int32))
    offs = jnp.arange(w_chunks.shape[0], dtype=jnp.int32) * chunk
    (_, idx), _ = jax.lax.scan(body, init, (w_chunks, b_chunks, offs))
    return idx


def chunk_output_layer(w_HxI, b_I, chunk: int):
    """Splits ``[H, I]`` / ``[I]`` into ``[C, H, chunk]`` / ``[C, chunk]`` (a storage layout choice)."""
    h, n = w_HxI.shape
    c = -(-n // chunk)
    pad = c * chunk - n
    w = jnp.pad(w_HxI, ((0, 0), (0, pad))).reshape(h, c, chunk).transpose(1, 0, 2)
    b = jnp.pad(b_I, (0, pad), constant_values=-jnp.inf).reshape(c, chunk)
    return w, b


def bench_topk_size(n_items: int, *, batch: int, k: int, chunks: Sequence[int], repeats: int,
                    hidden: int = 64, stream_chunk: int = 65536, recall_target: float = 0.95,
                    seed: int = 0) -> dict:
    """Times the top-k methods at one item count; recalls are against ``lax.top_k``."""
    key1, key2, key3 = jax.random.split(jax.random.key(seed), 3)
    scores = block(jax.random.normal(key1, (batch, n_items), jnp.float32))
    row: dict = {"items": n_items, "batch": batch, "k": k}

    def measure(name, fn, arg):
        f = jax.jit(fn)
        t0 = time.perf_counter()
        c = f.lower(arg).compile()
        row[f"{name}_compile_s"] = time.perf_counter() - t0
        out = np.asarray(block(c(arg)))
        row[f"{name}_ms"] = float(np.median(time_repeats(lambda: c(arg), repeats, warmup=0))) * 1e3
        return out

    exact = measure("lax_top_k", lambda s: jax.lax.top_k(s, k)[1], scores)
    for c in chunks:
        if c < n_items:
            got = measure(f"chunked_{c}", lambda s, c=c: metrics.topk_indices(s, k, chunk_size=c), scores)
            row[f"chunked_{c}_exact"] = bool(np.array_equal(np.sort(got, 1), np.sort(exact, 1)))
    approx_fn = lambda s: jax.lax.approx_max_k(s, k, recall_target=recall_target)[1]  # noqa: E731
    approx = measure("approx_max_k", approx_fn, scores)
    row["approx_is_fallback"] = "is_fallback = true" in jax.jit(approx_fn).lower(scores).as_text()
    row["approx_recall"] = topk_recall(approx, exact)
    row["approx_recall_target"] = recall_target
    del scores
    # Scoring + top-k from a hidden layer: materialised [B, I] scores vs streamed over chunks.
    h = jax.random.normal(key2, (batch, hidden), jnp.float32)
    w = jax.random.normal(key3, (hidden, n_items), jnp.float32) / math.sqrt(hidden)
    b = jnp.zeros((n_items,), jnp.float32)
    sc = min(stream_chunk, n_items)
    wc, bc = block(chunk_output_layer(w, b, sc))
    mat = measure("materialised_score_topk", lambda hh: jax.lax.top_k(hh @ w + b, k)[1], h)
    st = measure("streamed_score_topk", lambda hh: streamed_topk(hh, wc, bc, k), h)
    row["streamed_chunk"] = sc
    row["streamed_exact"] = bool(np.array_equal(np.sort(st, 1), np.sort(mat, 1)))
    row["materialised_scores_mb"] = batch * n_items * 4 / MB
    row["streamed_scores_mb"] = batch * sc * 4 / MB
    for name in list(row):
        if name.endswith("_ms") and name != "lax_top_k_ms" and not name.startswith(("materialised",
                                                                                    "streamed")):
            row[name[:-3] + "_over_lax"] = row[name] / row["lax_top_k_ms"]
    row["streamed_over_materialised"] = row["streamed_score_topk_ms"] / row["materialised_score_topk_ms"]
    return row


def part_topk(quick: bool, seed: int) -> dict:
    """Part 4 over 1e4 .. 1e6 items (1e4 .. 1e5 in quick mode)."""
    sizes = [10**4, 10**5] if quick else [10**4, 10**5, 10**6]
    batch = 32 if quick else 128
    chunks = (8192, 65536) if quick else (8192, 131072)
    rows = []
    for n in sizes:
        r = bench_topk_size(n, batch=batch, k=100, chunks=chunks, repeats=2 if quick else 5, seed=seed)
        print(f"[topk] I={n}: lax {r['lax_top_k_ms']:.1f} ms, approx {r['approx_max_k_ms']:.1f} ms "
              f"(recall {r['approx_recall']:.3f})", flush=True)
        rows.append(r)
        gc.collect()
    return {"rows": rows, "batch": batch, "k": 100, "chunks": list(chunks)}
