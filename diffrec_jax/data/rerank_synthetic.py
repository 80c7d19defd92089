"""A seeded synthetic reranking world with a known list-wise click model (DCDR spec, section 7).

No public data exists for DCDR (Avito's raw logs are not obtainable here and Kuaishou's
"VideoRerank" is private), so the library generates a world with the shape of a reranking log
(user, candidate set, initial ranking, exposed permutation, multi-type per-position responses)
and a *known* response model, so that a generated list can be scored exactly.

Generative process (pure NumPy, every draw from ``np.random.default_rng(seed)``):

* ``U`` users and ``I`` items with latents ``z_u, v_i ~ N(0, I_16 / 16)``; every item has one of
  ``C`` categories (uniform) and a Zipf popularity ``pop_i ∝ rank_i^{-1.1}`` (random ranks).
* user history: ``H`` distinct items drawn ∝ ``softmax(z_u . v_i / 0.5) x pop_i``
  (Gumbel top-k on ``z_u . v_i / 0.5 + log pop_i``).
* request: a uniform user and ``n`` distinct candidates drawn from the same law [design: the
  spec does not say how candidates are retrieved]; candidates are stored in a random order, so
  the index of a candidate carries no information.
* initial ranking (the ranking stage): candidates sorted by ``z_u . v_i + N(0, 0.5^2)``.
* logged (behaviour) list: the initial ranking with ``K ~ Poisson(2)`` uniformly random
  transpositions, so the logs contain diverse permutations.
* responses at 1-based position ``k`` of a list ``L`` (only the first ``m`` slots are exposed):

      logit_k = a z_u . v_{L_k} - b log2(k + 1) - c #{j < k: cat(L_j) = cat(L_k)}
                + d 1[k > 1, cat(L_{k-1}) != cat(L_k)] + e_0,

  ``click_k ~ Bernoulli(sigmoid(logit_k))`` and ``like_k ~ Bernoulli(sigmoid(logit_k - 1.5))``
  given a click (``a, b, c, d, e_0 = 3, 0.7, 0.8, 0.3, -1``).

The exact utility of a list is its expected number of clicks, ``sum_{k <= m} sigmoid(logit_k)``
(:func:`expected_clicks`); with ``n = 8`` the optimum over all ``8! = 40,320`` permutations is
found by brute force (:func:`brute_force_optimum`). The ``n = 20, m = 6`` variant has no exact
optimum here.

Because the click model and the law of the logged lists are both known, the *ideal* conditional
list generator (the exact Bayes posterior ``p(logged list | request, responses)`` that a denoiser
trained on these logs approximates) is computable for ``n <= 9`` (:func:`swap_prior`,
:func:`response_loglik`, :func:`bayes_conditional`): it tells which response conditions can
raise the utility at all, independently of any learning.

Lists are stored as *permutations of candidate indices* ``0..n-1`` (int32 ``[N, n]``), ``L[k]`` =
the candidate shown at position ``k``; a response of the logged list at position ``k`` refers to
candidate ``logged[k]``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import numpy as np

__all__ = [
    "RerankSplit",
    "RerankWorld",
    "all_permutations",
    "bayes_conditional",
    "brute_force_optimum",
    "click_logits",
    "enumerate_optimum",
    "expected_clicks",
    "make_rerank_world",
    "response_codes",
    "response_loglik",
    "swap_prior",
]

_CHUNK = 1024  # requests per sampling chunk (fixed, so results do not depend on memory)
# Per-position response codes used as the denoiser's condition (see :func:`response_codes`).
NO_CLICK, CLICK, CLICK_LIKE, UNEXPOSED = 0, 1, 2, 3
N_RESPONSE_CODES = 4


@dataclasses.dataclass(frozen=True, eq=False)
class RerankSplit:
    """The requests of one split (``N`` requests with ``n`` candidates each).

    Attributes:
      user: int32 ``[N]`` user ids.
      cands: int32 ``[N, n]`` item ids of the candidates (random order).
      init: int32 ``[N, n]`` the initial ranking, a permutation of ``0..n-1``.
      logged: int32 ``[N, n]`` the exposed (behaviour) list, a permutation of ``0..n-1``.
      clicks: float32 ``[N, n]`` sampled clicks per position of ``logged`` (0 beyond ``m``).
      likes: float32 ``[N, n]`` sampled likes per position of ``logged`` (0 beyond ``m``).
    """

    user: np.ndarray
    cands: np.ndarray
    init: np.ndarray
    logged: np.ndarray
    clicks: np.ndarray
    likes: np.ndarray

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def take(self, idx: np.ndarray) -> "RerankSplit":
        """The requests ``idx`` (an index array) as a new split."""
        return RerankSplit(*(getattr(self, f.name)[idx] for f in dataclasses.fields(self)))


@dataclasses.dataclass(frozen=True, eq=False)
class RerankWorld:
    """A generated world: latents, click-model constants and the train/valid/test requests.

    Attributes:
      z: float32 ``[U, D]`` user latents.
      v: float32 ``[I, D]`` item latents.
      item_cat: int32 ``[I]`` item categories.
      log_pop: float32 ``[I]`` log popularity.
      history: int32 ``[U, H]`` history items per user.
      n: candidates per request.
      m: exposed slots (``m <= n``).
      coef: ``{"a", "b", "c", "d", "e0", "like_offset"}`` click-model constants.
      train, valid, test: the splits.
      seed: the generator's seed.
    """

    z: np.ndarray
    v: np.ndarray
    item_cat: np.ndarray
    log_pop: np.ndarray
    history: np.ndarray
    n: int
    m: int
    coef: dict
    train: RerankSplit
    valid: RerankSplit
    test: RerankSplit
    seed: int

    @property
    def n_users(self) -> int:
        return int(self.z.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.v.shape[0])

    @property
    def n_cats(self) -> int:
        return int(self.item_cat.max()) + 1

    def summary(self) -> dict[str, Any]:
        """Sizes and the logged click rate of each split."""
        out = {"users": self.n_users, "items": self.n_items, "categories": self.n_cats,
               "n": self.n, "m": self.m}
        for name in ("train", "valid", "test"):
            s = getattr(self, name)
            out[name] = len(s)
            out[f"{name}_clicks_per_list"] = float(s.clicks.sum(1).mean())
        return out


def click_logits(world: RerankWorld, user: np.ndarray, cands: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """Ground-truth click logits of each position of each list.

    Args:
      world: the world (latents and constants).
      user: int ``[N]`` user ids.
      cands: int ``[N, n]`` candidate item ids.
      lists: int ``[N, ..., L]`` lists as candidate indices (any number of lists per request in
        the middle axes, e.g. ``[N, P, n]`` for ``P`` permutations).

    Returns:
      float64 ``[N, ..., L]`` ``logit_k`` of the module docstring, for every position.
    """
    co = world.coef
    lists = np.asarray(lists)
    extra = lists.ndim - 2
    items = np.take_along_axis(
        cands.reshape(cands.shape[:1] + (1,) * extra + cands.shape[1:]), lists, axis=-1
    )  # [N, ..., L]
    pref = np.einsum("nd,n...ld->n...l", world.z[user].astype(np.float64), world.v[items].astype(np.float64))
    cat = world.item_cat[items]
    L = lists.shape[-1]
    k = np.arange(1, L + 1, dtype=np.float64)
    same_before = np.zeros(lists.shape, np.float64)
    for j in range(L):
        for i in range(j):
            same_before[..., j] += cat[..., i] == cat[..., j]
    change = np.zeros(lists.shape, np.float64)
    change[..., 1:] = cat[..., 1:] != cat[..., :-1]
    return (co["a"] * pref - co["b"] * np.log2(k + 1) - co["c"] * same_before + co["d"] * change
            + co["e0"])


def expected_clicks(world: RerankWorld, user: np.ndarray, cands: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """Exact utility: expected clicks over the first ``m`` slots, ``sum_{k<=m} sigmoid(logit_k)``.

    Args:
      world: the world.
      user: int ``[N]``.
      cands: int ``[N, n]``.
      lists: int ``[N, ..., n]`` permutations of candidate indices.

    Returns:
      float64 ``[N, ...]``.
    """
    lg = click_logits(world, user, cands, np.asarray(lists)[..., : world.m])
    return (1.0 / (1.0 + np.exp(-lg))).sum(-1)


def all_permutations(n: int) -> np.ndarray:
    """Every permutation of ``0..n-1`` in lexicographic order, int8 ``[n!, n]``."""
    return np.array(list(itertools.permutations(range(n))), dtype=np.int8)


def brute_force_optimum(world: RerankWorld, split: RerankSplit, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The exact best list of every request (``n <= 12``), by dynamic programming over subsets.

    The utility is a sum over positions, and the term of position ``k`` depends only on the set
    ``S`` of the ``k - 1`` candidates placed before (its size gives the position, its categories
    the repeat count), the previous candidate ``l`` (category change) and the new one ``x``. So

        f(S ∪ {x}, x) = max_l f(S, l) + sigmoid(a p_x - b log2(|S| + 2) - c cnt(S, cat x)
                                                + d 1[cat l != cat x] + e_0)

    (Held-Karp) is the best utility of an ordering of ``S ∪ {x}`` ending in ``x``: exact, like
    enumerating all ``n!`` lists (:func:`enumerate_optimum` does that; the tests compare both),
    in ``O(2^n n^2)`` per request instead of ``O(n! n)``. Only the first ``m`` slots count; the
    remaining candidates fill the tail in index order.

    Args:
      world: the world.
      split: the requests.
      chunk: requests processed at once.

    Returns:
      ``(best_utility float64 [N], best_list int32 [N, n])``.
    """
    n, m, co = world.n, world.m, world.coef
    if n > 12:
        raise ValueError(f"the exact optimum needs n <= 12 candidates, the world has n = {n}")
    N = len(split)
    best_u = np.empty(N, np.float64)
    best_l = np.empty((N, n), np.int32)
    n_sub = 1 << n
    bits = ((np.arange(n_sub)[:, None] >> np.arange(n)[None, :]) & 1).astype(np.float64)  # [2^n, n]
    size = bits.sum(1).astype(np.int64)
    for s in range(0, N, chunk):
        e = min(N, s + chunk)
        R = e - s
        rows = np.arange(R)
        pref = np.einsum("rd,rkd->rk", world.z[split.user[s:e]].astype(np.float64),
                         world.v[split.cands[s:e]].astype(np.float64))  # [R, n]
        cat = world.item_cat[split.cands[s:e]]
        same = (cat[:, :, None] == cat[:, None, :]).astype(np.float64)  # [R, n, n]
        f = np.full((R, n_sub, n), -np.inf)
        back = np.full((R, n_sub, n), -1, np.int64)
        for x in range(n):
            f[:, 1 << x, x] = _sigmoid(co["a"] * pref[:, x] - co["b"] + co["e0"])
        for S in range(1, n_sub):
            k = size[S]  # candidates already placed
            if k >= m:
                continue
            out = np.flatnonzero(bits[S] == 0)
            cnt = same[:, :, out].transpose(0, 2, 1) @ bits[S]  # [R, |out|]
            base = co["a"] * pref[:, out] - co["b"] * math.log2(k + 2) - co["c"] * cnt + co["e0"]
            change = 1.0 - same[:, :, out]  # [R, l, |out|]
            gain = _sigmoid(base[:, None, :] + co["d"] * change)  # [R, l, |out|]
            cand = f[:, S, :, None] + gain  # [R, l, |out|]
            lbest = cand.argmax(1)  # [R, |out|]
            val = np.take_along_axis(cand, lbest[:, None, :], 1)[:, 0]
            for oi, x in enumerate(out):
                T = S | (1 << x)
                better = val[:, oi] > f[:, T, x]
                f[better, T, x] = val[better, oi]
                back[better, T, x] = lbest[better, oi]
        full = np.flatnonzero(size == m)
        vals = f[:, full, :].reshape(R, -1)
        arg = vals.argmax(1)
        best_u[s:e] = vals[rows, arg]
        S_cur = full[arg // n]
        x_cur = arg % n
        lists = np.zeros((R, n), np.int64)
        for pos in range(m - 1, -1, -1):
            lists[:, pos] = x_cur
            prev = back[rows, S_cur, x_cur]
            S_cur = S_cur & ~(1 << x_cur)
            x_cur = prev
        placed = np.zeros((R, n), bool)
        placed[rows[:, None], lists[:, :m]] = True
        for r in range(R):  # the unexposed tail: remaining candidates in index order
            lists[r, m:] = np.flatnonzero(~placed[r])
        best_l[s:e] = lists
    return best_u, best_l


def enumerate_optimum(world: RerankWorld, split: RerankSplit, chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The best list by scoring all ``n!`` permutations (``n <= 9``; slow, used to check the DP).

    Returns:
      ``(best_utility float64 [N], best_list int32 [N, n])``.
    """
    n = world.n
    if n > 9:
        raise ValueError(f"enumeration needs n <= 9 candidates, the world has n = {n}")
    perms = all_permutations(n).astype(np.int64)
    N = len(split)
    best_u = np.empty(N, np.float64)
    best_l = np.empty((N, n), np.int32)
    for s in range(0, N, chunk):
        e = min(N, s + chunk)
        lists = np.broadcast_to(perms[None], (e - s,) + perms.shape)
        u = expected_clicks(world, split.user[s:e], split.cands[s:e], lists)  # [c, n!]
        arg = u.argmax(1)
        best_u[s:e] = u[np.arange(e - s), arg]
        best_l[s:e] = perms[arg]
    return best_u, best_l


def _perm_rank(p: np.ndarray) -> np.ndarray:
    """Lexicographic index of permutations ``p`` (``[..., n]``) in :func:`all_permutations` order."""
    n = p.shape[-1]
    fact = np.array([math.factorial(n - 1 - i) for i in range(n)], np.int64)
    later_smaller = (p[..., None, :] < p[..., :, None]) & np.triu(np.ones((n, n), bool), 1)
    return (later_smaller.sum(-1) * fact).sum(-1)


def swap_prior(n: int, swaps_mean: float, tol: float = 1e-12) -> np.ndarray:
    """Exact law of the logged list relative to the initial one: ``K ~ Poisson(swaps_mean)``
    uniformly random transpositions (as the world draws them, :func:`make_rerank_world`).

    Returns:
      float64 ``[n!]``: ``P(logged = init[pi])`` for ``pi`` in :func:`all_permutations` order
      (index 0 is the identity). The same for every request, so it is computed once.
    """
    if n > 9:
        raise ValueError(f"the exact swap prior needs n <= 9 candidates, got n = {n}")
    perms = all_permutations(n).astype(np.int64)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    nb = np.empty((len(perms), len(pairs)), np.int64)  # the permutation one transposition away
    for q, (i, j) in enumerate(pairs):
        s = perms.copy()
        s[:, [i, j]] = s[:, [j, i]]
        nb[:, q] = _perm_rank(s)
    pk = np.zeros(len(perms))
    pk[0] = 1.0  # after K = 0 swaps: the identity
    prior = np.zeros(len(perms))
    k, w = 0, math.exp(-swaps_mean)
    while True:
        prior += w * pk
        if 1.0 - prior.sum() < tol or k > 10 * swaps_mean + 50:
            break
        pk = pk[nb].mean(1)  # a uniform transposition is its own inverse: pull = push
        k += 1
        w *= swaps_mean / k
    return prior / prior.sum()


def response_loglik(logits: np.ndarray, codes: np.ndarray, like_offset: float, m: int) -> np.ndarray:
    """``log P(responses = codes | list)`` under the true click model, from the list's click logits.

    Args:
      logits: ``[..., n]`` :func:`click_logits` of the lists.
      codes: int ``[..., n]`` response codes (broadcast with ``logits``); slots ``k >= m`` and
        ``UNEXPOSED`` codes contribute nothing.
      like_offset: the world's ``coef["like_offset"]``.
      m: exposed slots.

    Returns:
      float64 ``[...]``.
    """
    lsig = lambda x: -np.logaddexp(0.0, -x)  # noqa: E731  log sigmoid, stable
    logits, codes = np.broadcast_arrays(np.asarray(logits, np.float64), np.asarray(codes))
    per = np.where(codes == NO_CLICK, lsig(-logits), 0.0)
    per = per + np.where(codes == CLICK, lsig(logits) + lsig(-(logits - like_offset)), 0.0)
    per = per + np.where(codes == CLICK_LIKE, lsig(logits) + lsig(logits - like_offset), 0.0)
    return per[..., :m].sum(-1)


def bayes_conditional(world: RerankWorld, split: RerankSplit, codes: np.ndarray, swaps_mean: float,
                      guidance: tuple[float, ...] = (0.0,), chunk: int = 8) -> dict[str, np.ndarray]:
    """The *ideal* conditional list generator: the exact posterior over the logged list given
    the request and a response condition, with the true click model and the true log prior.

    ``p(x_0 = init[pi] | c) ∝ P_swap(pi) P(c | init[pi])^(1 + w)`` over all ``n!`` lists
    (:func:`swap_prior`, :func:`response_loglik`; ``w`` = guidance, ``w = 0`` is Bayes). A
    denoiser trained by x0 cross-entropy on the logs with their responses as the condition
    approximates exactly this law, so it is the best any DCDR generator of this world can do
    with that condition: the conditioning check of the spec (utility under ``c* =
    all-positive`` > observed > all-negative) can be checked here without any learning.

    Args:
      world: the world (``n <= 9``).
      split: the requests.
      codes: int ``[N, n]`` the condition of each request.
      swaps_mean: the world's Poisson mean of logged swaps (``config.data.swaps_mean``).
      guidance: the weights ``w``.
      chunk: requests scored at once.

    Returns:
      ``{"map_utility" [G, N], "mean_utility" [G, N], "map_lists" int32 [G, N, n],
      "info_nats" [G, N]}``: the true expected clicks of the posterior's mode and the posterior
      mean of them, the mode, and ``KL(posterior || prior)`` (how far the condition moves the
      law, in nats).
    """
    n, m = world.n, world.m
    codes = np.asarray(codes)
    N = len(split)
    if codes.shape != (N, n):
        raise ValueError(f"codes must have shape {(N, n)}, got {codes.shape}")
    perms = all_permutations(n).astype(np.int64)
    logprior = np.log(swap_prior(n, swaps_mean))
    G = len(guidance)
    out = {"map_utility": np.empty((G, N)), "mean_utility": np.empty((G, N)),
           "map_lists": np.empty((G, N, n), np.int32), "info_nats": np.empty((G, N))}
    for s in range(0, N, chunk):
        e = min(N, s + chunk)
        lists = np.take_along_axis(split.init[s:e, None, :].astype(np.int64),
                                   np.broadcast_to(perms[None], (e - s,) + perms.shape), 2)  # [c, P, n]
        lg = click_logits(world, split.user[s:e], split.cands[s:e], lists)
        util = _sigmoid(lg[..., :m]).sum(-1)  # [c, P]
        ll = response_loglik(lg, codes[s:e, None, :], world.coef["like_offset"], m)  # [c, P]
        for g, w in enumerate(guidance):
            lp = logprior[None] + (1.0 + w) * ll
            lp = lp - lp.max(1, keepdims=True)
            post = np.exp(lp)
            post /= post.sum(1, keepdims=True)
            arg = lp.argmax(1)
            rows = np.arange(e - s)
            out["map_utility"][g, s:e] = util[rows, arg]
            out["mean_utility"][g, s:e] = (post * util).sum(1)
            out["map_lists"][g, s:e] = lists[rows, arg]
            out["info_nats"][g, s:e] = (post * (np.log(np.maximum(post, 1e-300)) - logprior[None])).sum(1)
    return out


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def response_codes(clicks: np.ndarray, likes: np.ndarray, m: int) -> np.ndarray:
    """Per-position response codes: 0 no click, 1 click, 2 click + like, 3 unexposed (``k >= m``).

    Args:
      clicks: ``[N, n]`` 0/1.
      likes: ``[N, n]`` 0/1 (only counted with a click).
      m: exposed slots.

    Returns:
      int32 ``[N, n]``.
    """
    c = (np.asarray(clicks) > 0).astype(np.int32) * (1 + (np.asarray(likes) > 0).astype(np.int32))
    c[:, m:] = UNEXPOSED
    return c


def _gumbel_topk(rng: np.random.Generator, logits: np.ndarray, k: int) -> np.ndarray:
    """``k`` distinct indices per row drawn without replacement from ``softmax(logits)``."""
    g = logits - np.log(-np.log(rng.random(logits.shape)))
    return np.argpartition(-g, k - 1, axis=1)[:, :k]


def _apply_random_swaps(rng: np.random.Generator, lists: np.ndarray, n_swaps: np.ndarray) -> np.ndarray:
    """Applies ``n_swaps[r]`` uniformly random transpositions to row ``r`` of ``lists``."""
    out = lists.copy()
    n = lists.shape[1]
    rows = np.arange(lists.shape[0])
    for s in range(int(n_swaps.max(initial=0))):
        i = rng.integers(0, n, size=len(rows))
        j = (i + rng.integers(1, n, size=len(rows))) % n  # j != i, uniform over the others
        act = n_swaps > s
        a, b = out[rows, i].copy(), out[rows, j].copy()
        out[rows[act], i[act]] = b[act]
        out[rows[act], j[act]] = a[act]
    return out


def _requests(world_parts: dict, rng: np.random.Generator, N: int, n: int, m: int, coef: dict,
              swaps_mean: float, init_noise: float) -> RerankSplit:
    z, v, log_pop = world_parts["z"], world_parts["v"], world_parts["log_pop"]
    U = z.shape[0]
    user = rng.integers(0, U, size=N).astype(np.int32)
    cands = np.empty((N, n), np.int32)
    for s in range(0, N, _CHUNK):
        e = min(N, s + _CHUNK)
        logits = (z[user[s:e]] @ v.T) / 0.5 + log_pop[None]
        c = _gumbel_topk(rng, logits, n)
        cands[s:e] = c[np.arange(e - s)[:, None], rng.permuted(np.tile(np.arange(n), (e - s, 1)), axis=1)]
    pref = np.einsum("nd,nkd->nk", z[user], v[cands])
    init = np.argsort(-(pref + init_noise * rng.standard_normal(pref.shape)), axis=1).astype(np.int32)
    logged = _apply_random_swaps(rng, init, rng.poisson(swaps_mean, size=N)).astype(np.int32)
    tmp = RerankWorld(z=z, v=v, item_cat=world_parts["item_cat"], log_pop=log_pop,
                      history=world_parts["history"], n=n, m=m, coef=coef, train=None, valid=None,
                      test=None, seed=-1)
    p = 1.0 / (1.0 + np.exp(-click_logits(tmp, user, cands, logged)))
    p_like = 1.0 / (1.0 + np.exp(-(click_logits(tmp, user, cands, logged) - coef["like_offset"])))
    clicks = (rng.random(p.shape) < p).astype(np.float32)
    likes = clicks * (rng.random(p.shape) < p_like).astype(np.float32)
    clicks[:, m:] = 0.0
    likes[:, m:] = 0.0
    return RerankSplit(user=user, cands=cands, init=init, logged=logged, clicks=clicks, likes=likes)


def make_rerank_world(
    *,
    n_users: int = 2000,
    n_items: int = 5000,
    n_cats: int = 20,
    dim: int = 16,
    history_len: int = 20,
    n: int = 8,
    m: int | None = None,
    n_train: int = 50_000,
    n_valid: int = 5_000,
    n_test: int = 5_000,
    zipf: float = 1.1,
    swaps_mean: float = 2.0,
    init_noise: float = 0.5,
    a: float = 3.0,
    b: float = 0.7,
    c: float = 0.8,
    d: float = 0.3,
    e0: float = -1.0,
    like_offset: float = 1.5,
    seed: int = 0,
) -> RerankWorld:
    """Generates the world of the module docstring (deterministic in ``seed``).

    Args:
      n_users, n_items, n_cats, dim, history_len: sizes (spec: 2000, 5000, 20, 16, 20).
      n: candidates per request (8 for the brute-force variant, 20 for the large one).
      m: exposed slots (default ``n``; the large variant uses 6).
      n_train, n_valid, n_test: requests per split (spec: 50k / 5k / 5k).
      zipf: popularity exponent.
      swaps_mean: mean of the Poisson number of random swaps of the logged list.
      init_noise: std of the ranking stage's score noise.
      a, b, c, d, e0, like_offset: click-model constants.
      seed: generator seed.

    Returns:
      A :class:`RerankWorld`.
    """
    m = n if m is None else int(m)
    if not 1 <= m <= n:
        raise ValueError(f"need 1 <= m <= n, got m = {m}, n = {n}")
    if n < 2 or n > n_items:
        raise ValueError(f"need 2 <= n <= n_items, got n = {n}")
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((n_users, dim)) / math.sqrt(dim)).astype(np.float32)
    v = (rng.standard_normal((n_items, dim)) / math.sqrt(dim)).astype(np.float32)
    item_cat = rng.integers(0, n_cats, size=n_items).astype(np.int32)
    ranks = rng.permutation(n_items) + 1
    pop = ranks.astype(np.float64) ** (-zipf)
    log_pop = np.log(pop / pop.sum()).astype(np.float32)
    history = np.empty((n_users, history_len), np.int32)
    for s in range(0, n_users, _CHUNK):
        e = min(n_users, s + _CHUNK)
        history[s:e] = _gumbel_topk(rng, (z[s:e] @ v.T) / 0.5 + log_pop[None], history_len)
    coef = {"a": a, "b": b, "c": c, "d": d, "e0": e0, "like_offset": like_offset}
    parts = {"z": z, "v": v, "log_pop": log_pop, "item_cat": item_cat, "history": history}
    splits = [_requests(parts, rng, N, n, m, coef, swaps_mean, init_noise)
              for N in (n_train, n_valid, n_test)]
    return RerankWorld(z=z, v=v, item_cat=item_cat, log_pop=log_pop, history=history, n=n, m=m,
                       coef=coef, train=splits[0], valid=splits[1], test=splits[2], seed=seed)
