"""Valid-list decoding, beam search and the reverse process with early stop.

* **Inference** ([summary]: starting sequences, beam search, early stop; [paper]: evaluator):
  start from the initial ranking as ``x_{t_s}``; each step forms per-position distributions of
  ``x_{t-1}`` (:func:`transition_logprobs`: the exact posterior mixed over the predicted ``x_0``
  for ``token_uniform``, the posterior mixture's per-position marginal for ``perm_uniform``, the
  ``x_0`` prediction itself for ``perm_swap``), decodes the ``B`` best *valid permutations* of
  each beam (:func:`decode_topb`, left to right without replacement; ``B = 1`` is greedy), keeps
  the ``B`` best distinct lists by accumulated log-probability, and stops early once the beam's
  set of lists stops changing (:func:`generate`). A list-wise **evaluator**
  (:class:`ListEvaluator`, per-position click / like probabilities, BCE on the logs) picks the
  final list among the beam.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffrec_jax.models.dcdr.kernels import LOGP_FLOOR, DiscreteSchedule, transition_logprobs

__all__ = ["INVALID", "decode_topb", "generate", "greedy_decode", "greedy_decode_jax"]

INVALID = -1e30  # score of an empty beam slot (finite, so arithmetic stays defined)


def decode_topb(logp_LxN: jnp.ndarray, beam: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The ``beam`` most likely valid permutations under per-position log-probabilities.

    Left to right, every partial list is extended by each unused candidate, scored by the sum of
    ``logp[k, x_k]``, and the best ``beam`` partial lists are kept (beam search over positions,
    without replacement). ``beam = 1`` is greedy decoding (:func:`greedy_decode`). Slots beyond
    the number of distinct lists found carry score :data:`INVALID` (they are still valid
    permutations).

    Args:
      logp_LxN: ``[L, N]`` log-probabilities, ``L <= N`` positions over ``N`` candidates.
      beam: ``B``.

    Returns:
      ``(lists int32 [B, L], scores float32 [B])``, best first.
    """
    L, N = logp_LxN.shape
    logp = jnp.maximum(logp_LxN, LOGP_FLOOR)
    seqs = jnp.zeros((beam, L), jnp.int32)
    score = jnp.full((beam,), INVALID, jnp.float32).at[0].set(0.0)
    used = jnp.zeros((beam, N), bool)
    rows = jnp.arange(beam)
    for k in range(L):
        cand = score[:, None] + jnp.where(used, -jnp.inf, logp[k][None, :])
        top_v, top_i = jax.lax.top_k(cand.reshape(-1), beam)
        parent, choice = top_i // N, top_i % N
        seqs = seqs[parent].at[:, k].set(choice.astype(jnp.int32))
        used = used[parent].at[rows, choice].set(True)
        score = jnp.where(score[parent] <= INVALID / 2, INVALID, top_v)
    return seqs, score


def greedy_decode_jax(logp_LxN: jnp.ndarray) -> jnp.ndarray:
    """:func:`decode_topb` with one beam: the greedy valid permutation, int32 ``[L]``."""
    return decode_topb(logp_LxN, 1)[0][0]


def greedy_decode(logp_LxN: np.ndarray) -> np.ndarray:
    """Reference greedy decoding (NumPy): position by position, the best unused candidate."""
    L, N = logp_LxN.shape
    used = np.zeros(N, bool)
    out = np.zeros(L, np.int32)
    for k in range(L):
        row = np.where(used, -np.inf, np.maximum(logp_LxN[k], LOGP_FLOOR))
        out[k] = int(np.argmax(row))
        used[out[k]] = True
    return out


def _merge_beams(seqs: jnp.ndarray, scores: jnp.ndarray, beam: int, aux: jnp.ndarray | None = None):
    """Best ``beam`` distinct lists among ``[M, n]`` candidates (duplicates keep the best score);
    ``(lists, scores)``, plus the chosen rows of ``aux`` ``[M]`` when given."""
    order = jnp.argsort(-scores)
    seqs, scores = seqs[order], scores[order]
    same = jnp.all(seqs[:, None, :] == seqs[None, :, :], -1)  # [M, M]
    earlier = jnp.tril(jnp.ones_like(same), k=-1)
    dup = jnp.any(same & earlier, axis=1)
    scores = jnp.where(dup, INVALID, scores)
    top_v, top_i = jax.lax.top_k(scores, beam)
    if aux is None:
        return seqs[top_i], top_v
    return seqs[top_i], top_v, aux[order][top_i]


def _same_set(a: jnp.ndarray, sa: jnp.ndarray, b: jnp.ndarray, sb: jnp.ndarray) -> jnp.ndarray:
    """Whether the valid lists of two beams (``[B, n]`` with scores) form the same set."""
    va, vb = sa > INVALID / 2, sb > INVALID / 2
    same = jnp.all(a[:, None, :] == b[None, :, :], -1) & va[:, None] & vb[None, :]
    return (jnp.sum(va) == jnp.sum(vb)) & jnp.all(jnp.any(same, 1) | ~va)


def generate(
    logits_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    init: jnp.ndarray,
    *,
    kernel: str,
    sched: DiscreteSchedule,
    t_start: int,
    beam: int = 1,
    early_stop: bool = True,
    guide_fn: Callable[[jnp.ndarray], jnp.ndarray] | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Reverse process from the initial lists with beam search and early stop (host loop).

    ``x_{t_s}`` = ``init``. At each step ``t = t_s..1`` every beam list ``x_t`` gets per-position
    log-probabilities of ``x_{t-1}`` (:func:`transition_logprobs` of ``logits_fn(x_t, t)``), its
    ``B`` best valid permutations (:func:`decode_topb`) are scored by the beam score plus their
    log-probability, and the ``B`` best distinct lists form the next beam. A request stops (its
    beam frozen) when the set of its beam lists does not change in a step (``early_stop``); the
    loop ends when all requests stopped or ``t`` reaches 0.

    Args:
      logits_fn: ``(x_RxBxn int32, t int) -> [R, B, n, n]`` pointer logits of ``p(x_0 | x_t)``
        (a closure over the request's context and condition).
      init: int ``[R, n]`` initial lists, or ``[R, B, n]`` ``B`` starting sequences per request
        (e.g. the initial list and noised copies of it; all start live).
      kernel, sched: the diffusion kernel and schedule.
      t_start: ``t_s`` in ``1..T`` (the "noise scale" knob).
      beam: ``B``.
      early_stop: freeze a request whose beam set is a fixed point.
      guide_fn: optional ``(lists int32 [R, M, n]) -> [R, M]`` guidance term (e.g. ``lambda``
        times an evaluator's ``log P(c | list)``: classifier guidance on the condition,
        [design]). A beam's ranking score is then its accumulated log-probability plus the
        guide of its *current* list, so candidates are compared by ``log p + guide`` at every
        step and the returned lists are sorted by it.

    Returns:
      ``(lists int32 [R, B, n], scores float32 [R, B], steps int32 [R])``; ``steps`` = reverse
      steps a request took before it stopped.
    """
    if not 1 <= t_start <= sched.num_steps:
        raise ValueError(f"t_start must be in 1..{sched.num_steps}, got {t_start}")
    if init.ndim == 3:  # several starting sequences per request, all live
        R, b0, n = init.shape
        if b0 != beam:
            raise ValueError(f"init has {b0} starting sequences per request, beam is {beam}")
        seqs = init.astype(jnp.int32)
        scores = jnp.zeros((R, beam), jnp.float32)
    else:
        R, n = init.shape
        seqs = jnp.broadcast_to(init[:, None, :], (R, beam, n)).astype(jnp.int32)
        scores = jnp.full((R, beam), INVALID, jnp.float32).at[:, 0].set(0.0)
    done = jnp.zeros((R,), bool)
    steps = jnp.zeros((R,), jnp.int32)
    expand, merge = _beam_expand(kernel, beam), _beam_merge(beam)
    guide = None
    if guide_fn is not None:
        guide = guide_fn(seqs)
        scores = jnp.where(scores > INVALID / 2, scores + guide, INVALID)
    for t in range(t_start, 0, -1):
        logits = logits_fn(seqs, t)
        base = scores if guide is None else jnp.where(scores > INVALID / 2, scores - guide, INVALID)
        dec, tot = expand(seqs, base, logits, jnp.int32(t), sched)
        if guide_fn is None:
            new_seqs, new_scores, fixed = merge(seqs, scores, dec, tot)
        else:
            g_dec = guide_fn(dec)
            tot = jnp.where(tot > INVALID / 2, tot + g_dec, INVALID)
            new_seqs, new_scores, fixed, new_guide = merge(seqs, scores, dec, tot, g_dec)
            guide = jnp.where(done[:, None], guide, new_guide)
        new_seqs = jnp.where(done[:, None, None], seqs, new_seqs)
        new_scores = jnp.where(done[:, None], scores, new_scores)
        steps = steps + (~done).astype(jnp.int32)
        if early_stop:
            done = done | fixed
        seqs, scores = new_seqs, new_scores
        if early_stop and bool(jnp.all(done)):
            break
    return seqs, scores, steps


_STEP_CACHE: dict = {}


def _beam_expand(kernel: str, beam: int):
    """Jitted ``(seqs, scores, logits, t, sched) -> (cands [R, B*B, n], scores [R, B*B])``: the ``B``
    best valid permutations of every beam list under its transition log-probabilities, scored by
    the beam score plus their log-probability."""
    key = ("expand", kernel, beam)
    if key not in _STEP_CACHE:

        @jax.jit
        def expand(seqs, scores, logits, t, sched):
            lp = transition_logprobs(kernel, seqs, logits, t, sched)  # [R, B, n, n]
            dec, dsc = jax.vmap(jax.vmap(lambda l: decode_topb(l, beam)))(lp)  # [R,B,B,n], [R,B,B]
            valid = (scores[:, :, None] > INVALID / 2) & (dsc > INVALID / 2)
            tot = jnp.where(valid, scores[:, :, None] + dsc, INVALID)
            R, B, _, n = dec.shape
            return dec.reshape(R, B * B, n), tot.reshape(R, B * B)

        _STEP_CACHE[key] = expand
    return _STEP_CACHE[key]


def _beam_merge(beam: int):
    """Jitted ``(seqs, scores, cands, cand_scores[, cand_aux]) -> (new_seqs, new_scores, fixed[,
    new_aux])``: the ``B`` best distinct candidates and whether the beam's set of lists stayed the
    same (and the candidates' ``cand_aux`` values that came along)."""
    key = ("merge", beam)
    if key not in _STEP_CACHE:

        @jax.jit
        def merge(seqs, scores, cands, cand_scores, cand_aux=None):
            if cand_aux is None:
                ms, msc = jax.vmap(lambda s, c: _merge_beams(s, c, beam))(cands, cand_scores)
            else:  # carry a per-candidate value (the guide) along with the chosen lists
                ms, msc, ma = jax.vmap(lambda s, c, a: _merge_beams(s, c, beam, a))(cands, cand_scores, cand_aux)
            fixed = jax.vmap(_same_set)(seqs, scores, ms, msc)
            return (ms, msc, fixed) if cand_aux is None else (ms, msc, fixed, ma)

        _STEP_CACHE[key] = merge
    return _STEP_CACHE[key]
