"""Learning-free tests of DCDR (spec shared/specs/dcdr.md, section 7) and of the synthetic world.

* forward marginals of the closed forms against Monte Carlo (token-level and permutation-level);
* posterior rows sum to 1 and are Bayes-consistent, by enumeration of all permutations;
* decoding always returns a valid permutation; beam 1 equals greedy (decoder and whole reverse
  process); early stop triggers on a fixed point;
* the exact DP optimum of the world equals enumeration of all permutations.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffrec_jax.data import rerank_synthetic as RS
from diffrec_jax.models import dcdr as D
from diffrec_jax.training import rerank  # noqa: E402

SCHED = D.make_discrete_schedule(6, "linear", 0.1, 0.4)


def _is_perm(rows: np.ndarray) -> bool:
    rows = np.asarray(rows)
    return bool(np.all(np.sort(rows, -1) == np.arange(rows.shape[-1])))


def test_schedule_shapes_and_monotone():
    for kind in ("linear", "cosine"):
        s = D.make_discrete_schedule(10, kind)
        ab = np.asarray(s.alphas_bar)
        assert ab.shape == (11,) and ab[0] == 1.0 and np.all(np.diff(ab) < 0)
        np.testing.assert_allclose(ab[1:], np.cumprod(1 - np.asarray(s.betas)[1:]), rtol=1e-4)
    with pytest.raises(ValueError, match="kind"):
        D.make_discrete_schedule(3, "exp")


def test_token_marginal_matches_monte_carlo():
    n, L, t, S = 5, 4, 3, 40_000
    x0 = jnp.array([[0, 3, 3, 1]], jnp.int32)
    xt = D.token_q_sample(jax.random.key(0), jnp.tile(x0, (S, 1)), jnp.full((S,), t), SCHED, n)
    freq = np.stack([(np.asarray(xt) == j).mean(0) for j in range(n)], -1)  # [L, n]
    exact = np.asarray(D.token_marginal(x0, jnp.array([t]), SCHED, n))[0]
    np.testing.assert_allclose(freq, exact, atol=0.012)


def test_perm_marginal_matches_monte_carlo():
    n, t, S = 3, 2, 40_000
    x0 = jnp.array([[2, 0, 1]], jnp.int32)
    xt = np.asarray(D.perm_q_sample(jax.random.key(1), jnp.tile(x0, (S, 1)), jnp.full((S,), t), SCHED))
    assert _is_perm(xt)
    for p in itertools.permutations(range(n)):
        freq = np.mean(np.all(xt == np.array(p), -1))
        exact = float(np.exp(D.perm_log_marginal(jnp.array(p), x0[0], t, SCHED)))
        assert abs(freq - exact) < 0.012, (p, freq, exact)


@pytest.mark.slow
def test_swap_kernel_permutations_and_first_step():
    n, S = 6, 5_000
    x0 = jnp.tile(jnp.arange(n, dtype=jnp.int32)[None], (S, 1))
    x1 = np.asarray(D.swap_q_sample(jax.random.key(2), x0, jnp.ones((S,), jnp.int32), SCHED, 1))
    assert _is_perm(x1)
    # one Binomial(1, beta_1) swap at t = 1: unchanged with probability exactly 1 - beta_1
    keep = np.mean(np.all(x1 == np.arange(n), -1))
    assert abs(keep - (1 - float(SCHED.betas[1]))) < 0.02
    moved = (x1 != np.arange(n)).sum(1)
    assert set(np.unique(moved)) <= {0, 2}
    x6 = np.asarray(D.swap_q_sample(jax.random.key(3), x0[:50], jnp.full((50,), 6, jnp.int32), SCHED, 2))
    assert _is_perm(x6) and np.mean(np.all(x6 == np.arange(n), -1)) < 0.5


def _one_step_perm(y, x, t, K):
    """q(x_t = x | x_{t-1} = y) for the uniform permutation kernel."""
    b = float(SCHED.betas[t])
    return (1 - b) * float(np.all(np.asarray(y) == np.asarray(x))) + b / K


@pytest.mark.parametrize("t", [1, 2, 5])
def test_perm_posterior_rows_sum_to_one_and_bayes(t):
    n = 3
    perms = [jnp.array(p, jnp.int32) for p in itertools.permutations(range(n))]
    K = len(perms)
    marg = lambda x, x0, s: float(np.exp(D.perm_log_marginal(x, x0, s, SCHED)))  # noqa: E731
    for x0 in perms:
        for xt in perms:
            post = np.array([float(D.perm_posterior_prob(y, xt, x0, t, SCHED)) for y in perms])
            assert abs(post.sum() - 1) < 1e-5
            # Bayes consistency: sum_y q(x_t | y) q(y | x_0) = q(x_t | x_0)
            joint = np.array([_one_step_perm(y, xt, t, K) * marg(y, x0, t - 1) for y in perms])
            assert abs(joint.sum() - marg(xt, x0, t)) < 1e-5
            np.testing.assert_allclose(post, joint / joint.sum(), atol=1e-5)


@pytest.mark.parametrize("t", [1, 3, 6])
def test_token_posterior_rows_sum_to_one_and_bayes(t):
    n = 4
    ab, ab_prev, b = (float(SCHED.alphas_bar[t]), float(SCHED.alphas_bar[t - 1]), float(SCHED.betas[t]))
    for l, i in itertools.product(range(n), range(n)):
        post = np.asarray(D.token_posterior(jnp.array([i]), jax.nn.one_hot(jnp.array([l]), n), t, SCHED, n))[0]
        assert abs(post.sum() - 1) < 1e-5
        fwd = np.array([(1 - b) * (j == i) + b / n for j in range(n)])
        prior = np.array([ab_prev * (j == l) + (1 - ab_prev) / n for j in range(n)])
        joint = fwd * prior
        assert abs(joint.sum() - (ab * (i == l) + (1 - ab) / n)) < 1e-6
        np.testing.assert_allclose(post, joint / joint.sum(), atol=1e-5)
    # a mixed x0 distribution gives the mixture of the posteriors
    pi = jnp.array([[0.1, 0.2, 0.3, 0.4]])
    mix = np.asarray(D.token_posterior(jnp.array([2]), pi, t, SCHED, n))[0]
    parts = [np.asarray(D.token_posterior(jnp.array([2]), jax.nn.one_hot(jnp.array([l]), n), t, SCHED, n))[0]
             for l in range(n)]
    np.testing.assert_allclose(mix, sum(float(pi[0, l]) * parts[l] for l in range(n)), atol=1e-6)


def test_transition_logprobs_are_distributions():
    n = 5
    x = jnp.array([[3, 1, 0, 4, 2]], jnp.int32)
    lg = jax.random.normal(jax.random.key(4), (1, n, n))
    for kernel in D.KERNELS:
        for t in (1, 4):
            p = np.exp(np.asarray(D.transition_logprobs(kernel, x, lg, jnp.array([t]), SCHED)))
            np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    # at t = 1 the uniform-permutation step is the x0 prediction itself
    p1 = np.exp(np.asarray(D.transition_logprobs("perm_uniform", x, lg, jnp.array([1]), SCHED)))
    np.testing.assert_allclose(p1, np.asarray(jax.nn.softmax(lg, -1)), atol=1e-5)


def test_decoding_always_valid_and_beam1_is_greedy():
    rng = np.random.default_rng(0)
    for n in (2, 6):
        lp = rng.normal(size=(24, n, n)) * rng.choice([0.1, 1.0, 10.0], size=(24, 1, 1))
        lp[::3, :, 0] += 20.0  # every position prefers the same candidate
        lp[::3][rng.random((8, n, n)) < 0.3] = -np.inf  # some entries impossible
        lp[1::4] = 0.0  # all ties
        for b in (1, 3, 8):
            seqs, scores = map(np.asarray, jax.jit(jax.vmap(lambda l, b=b: D.decode_topb(l, b)))(
                jnp.asarray(lp, jnp.float32)))
            assert _is_perm(seqs)
            assert np.all(np.diff(scores, axis=-1) <= 1e-4)
            for i in range(len(lp)):
                if b == 1:
                    np.testing.assert_array_equal(seqs[i, 0], D.greedy_decode(lp[i]))
                valid = scores[i] > D.INVALID / 2
                assert valid[0] and len({tuple(s) for s in seqs[i][valid]}) == int(valid.sum())


def _random_logits_fn(n, key):
    w = jax.random.normal(key, (n + 1, n, n))

    def fn(x, t):  # x: [R, B, n] -> [R, B, n, n], deterministic in (x, t)
        oh = jax.nn.one_hot(x, n)
        return jnp.einsum("rbkj,kjl->rbkl", oh, w[:n]) * 2.0 + w[n][None, None] * (t / 3.0)

    return fn


@pytest.mark.slow
@pytest.mark.parametrize("kernel", D.KERNELS)
def test_generate_beam1_equals_greedy_loop(kernel):
    n, R, ts = 6, 4, 4
    fn = _random_logits_fn(n, jax.random.key(5))
    init = jnp.asarray(np.argsort(np.random.default_rng(1).random((R, n)), 1), jnp.int32)
    seqs, _, steps = D.generate(fn, init, kernel=kernel, sched=SCHED, t_start=ts, beam=1, early_stop=False)
    assert np.all(np.asarray(steps) == ts)
    x = np.asarray(init)
    for t in range(ts, 0, -1):
        lp = np.asarray(D.transition_logprobs(kernel, jnp.asarray(x)[:, None], fn(jnp.asarray(x)[:, None], t),
                                              jnp.int32(t), SCHED))[:, 0]
        x = np.stack([D.greedy_decode(lp[r]) for r in range(R)])
    np.testing.assert_array_equal(np.asarray(seqs)[:, 0], x)
    seqs4, scores4, _ = D.generate(fn, init, kernel=kernel, sched=SCHED, t_start=ts, beam=4)
    assert _is_perm(np.asarray(seqs4))
    starts = jnp.stack([init, init[:, ::-1], jnp.roll(init, 1, 1)], 1)  # several live starting lists
    seqs3, scores3, _ = D.generate(fn, starts, kernel=kernel, sched=SCHED, t_start=2, beam=3)
    assert _is_perm(np.asarray(seqs3)) and np.all(np.asarray(scores3)[:, 0] > D.INVALID / 2)


def test_early_stop_on_fixed_point():
    n, R = 5, 3

    def copy_fn(x, t):  # the denoiser says "x_0 = x_t": the reverse chain is a fixed point
        return 30.0 * jax.nn.one_hot(x, n)

    init = jnp.asarray(np.argsort(np.random.default_rng(2).random((R, n)), 1), jnp.int32)
    seqs, _, steps = D.generate(copy_fn, init, kernel="perm_swap", sched=SCHED, t_start=6, beam=1)
    np.testing.assert_array_equal(np.asarray(steps), 1)
    np.testing.assert_array_equal(np.asarray(seqs)[:, 0], np.asarray(init))
    _, _, steps3 = D.generate(copy_fn, init, kernel="perm_swap", sched=SCHED, t_start=6, beam=3)
    assert np.all(np.asarray(steps3) <= 2)
    _, _, steps_off = D.generate(copy_fn, init, kernel="perm_swap", sched=SCHED, t_start=6, beam=1,
                                 early_stop=False)
    np.testing.assert_array_equal(np.asarray(steps_off), 6)


def _tiny_world(**kw):
    args = dict(n_users=50, n_items=120, n_cats=6, n=6, n_train=40, n_valid=5, n_test=25, seed=3)
    args.update(kw)
    return RS.make_rerank_world(**args)


def test_world_is_seeded_and_valid():
    w1, w2 = _tiny_world(), _tiny_world()
    for f in ("user", "cands", "init", "logged", "clicks", "likes"):
        np.testing.assert_array_equal(getattr(w1.train, f), getattr(w2.train, f))
    assert not np.array_equal(_tiny_world(seed=4).train.cands, w1.train.cands)
    for s in (w1.train, w1.test):
        assert _is_perm(s.init) and _is_perm(s.logged)
        assert np.all(s.likes <= s.clicks)
        assert all(len(set(r)) == w1.n for r in s.cands)
    w = _tiny_world(m=3)
    assert np.all(w.train.clicks[:, 3:] == 0)
    codes = RS.response_codes(w.train.clicks, w.train.likes, 3)
    assert np.all(codes[:, 3:] == RS.UNEXPOSED) and codes.max() <= 3


@pytest.mark.parametrize("m", [None, 4])
def test_dp_optimum_equals_enumeration(m):
    w = _tiny_world(m=m)
    u_dp, l_dp = RS.brute_force_optimum(w, w.test)
    u_en, _ = RS.enumerate_optimum(w, w.test)
    np.testing.assert_allclose(u_dp, u_en, atol=1e-12)
    np.testing.assert_allclose(RS.expected_clicks(w, w.test.user, w.test.cands, l_dp), u_dp, atol=1e-12)
    assert _is_perm(l_dp)
    assert np.all(u_dp >= RS.expected_clicks(w, w.test.user, w.test.cands, w.test.init) - 1e-12)


def test_denoiser_shapes_and_loss_finite():
    import ml_collections

    w = _tiny_world()
    c = ml_collections.ConfigDict({"model": {"kernel": "token_uniform", "emb_dim": 16, "n_layers": 1,
                                             "n_heads": 2}, "diffusion": {"steps": 4}})
    D.DCDR.validate_config(c)
    model = D.DCDR(c, w)
    _, p, _ = model.init(jax.random.key(0))
    ctx = D.Context(jnp.asarray(w.train.user[:5]), jnp.asarray(w.train.cands[:5]),
                    jnp.asarray(w.history[w.train.user[:5]]))
    x0 = jnp.asarray(w.train.logged[:5])
    codes = jnp.asarray(RS.response_codes(w.train.clicks[:5], w.train.likes[:5], w.m))
    @jax.jit
    def both(p, key):
        lg = model.logits(p, ctx, x0, jnp.ones(5, jnp.int32), codes)
        return lg, model.loss(p, ctx, x0, codes, jnp.ones(5, bool), key)

    lg, (loss, aux) = both(p, jax.random.key(1))
    assert lg.shape == (5, w.n, w.n)
    assert np.isfinite(float(loss)) and 0 <= float(aux["acc"]) <= 1
    bad = ml_collections.ConfigDict({"model": {"kernel": "gaussian"}})
    with pytest.raises(ValueError, match="config.model.kernel"):
        D.DCDR.validate_config(bad)


def test_swap_search_neighbours_and_monotone_under_exact_utility():

    w = _tiny_world()
    s = w.test.take(np.arange(20))
    nb = np.asarray(rerank.swap_neighbours(jnp.asarray(s.init)))
    assert nb.shape == (20, 1 + w.n * (w.n - 1) // 2, w.n)
    np.testing.assert_array_equal(nb[:, 0], s.init)
    assert all(len({tuple(r) for r in nb[q]}) == nb.shape[1] for q in range(20))  # all distinct
    assert np.all(np.sort(nb, -1) == np.arange(w.n))  # valid permutations
    assert np.all((nb[:, 1:] != s.init[:, None]).sum(-1) == 2)  # exactly one swap each

    def exact(c):
        return jnp.asarray(RS.expected_clicks(w, s.user, s.cands, np.asarray(c)))

    u0 = RS.expected_clicks(w, s.user, s.cands, s.init)
    one = np.asarray(rerank.swap_search(exact, jnp.asarray(s.init), 1))
    two = np.asarray(rerank.swap_search(exact, jnp.asarray(s.init), 2))
    u1 = RS.expected_clicks(w, s.user, s.cands, one)
    u2 = RS.expected_clicks(w, s.user, s.cands, two)
    assert np.all(u1 >= u0 - 1e-12) and np.all(u2 >= u1 - 1e-12)
    np.testing.assert_allclose(u1, RS.expected_clicks(w, s.user, s.cands, nb).max(1))


# -- the ideal conditional generator (exact Bayes posterior of the world) and evaluator guidance --


def test_swap_prior_matches_the_worlds_swaps():
    """The exact law of the logged list (Poisson(lam) uniform transpositions of the initial
    list) equals the frequencies of the world's own swap sampler."""
    n, lam, S = 4, 2.0, 60_000
    prior = RS.swap_prior(n, lam)
    perms = RS.all_permutations(n).astype(np.int64)
    assert prior.shape == (24,) and abs(prior.sum() - 1) < 1e-12
    assert prior[0] >= np.exp(-lam)  # identity: at least the K = 0 mass
    rng = np.random.default_rng(0)
    lists = RS._apply_random_swaps(rng, np.tile(np.arange(n), (S, 1)), rng.poisson(lam, size=S))
    freq = np.bincount(RS._perm_rank(lists.astype(np.int64)), minlength=24) / S
    np.testing.assert_allclose(freq, prior, atol=0.006)
    np.testing.assert_array_equal(RS._perm_rank(perms), np.arange(24))


def test_response_loglik_is_a_distribution_over_codes():
    """sum over all response patterns of P(codes | list) = 1 (m = 3 exposed of n = 4)."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 4)) * 2
    m = 3
    pats = np.array(list(itertools.product([RS.NO_CLICK, RS.CLICK, RS.CLICK_LIKE], repeat=m)))
    codes = np.concatenate([pats, np.full((len(pats), 1), RS.UNEXPOSED)], 1)  # [27, 4]
    ll = RS.response_loglik(logits[:, None, :], codes[None], 1.5, m)  # [5, 27]
    np.testing.assert_allclose(np.exp(ll).sum(1), 1.0, rtol=1e-12)


def test_bayes_conditional_without_condition_is_the_prior():
    w = _tiny_world(n=5, m=4)
    s = w.test.take(np.arange(6))
    none = np.full((6, w.n), RS.UNEXPOSED)
    o = RS.bayes_conditional(w, s, none, 2.0, guidance=(0.0, 5.0))
    np.testing.assert_array_equal(o["map_lists"][0], s.init)  # the prior's mode: no swap
    np.testing.assert_allclose(o["info_nats"], 0.0, atol=1e-12)
    perms = RS.all_permutations(w.n).astype(np.int64)
    lists = np.take_along_axis(np.repeat(s.init[:, None], len(perms), 1).astype(np.int64),
                               np.broadcast_to(perms[None], (6,) + perms.shape), 2)
    util = RS.expected_clicks(w, s.user, s.cands, lists)
    np.testing.assert_allclose(o["mean_utility"][0], util @ RS.swap_prior(w.n, 2.0), rtol=1e-10)
    opt, _ = RS.brute_force_optimum(w, s)
    assert np.all(o["map_utility"] <= opt[None] + 1e-12)
    # a condition moves the law: the observed responses carry information about the list
    obs = RS.response_codes(s.clicks, s.likes, w.m)
    o2 = RS.bayes_conditional(w, s, obs, 2.0, guidance=(0.0, 5.0))
    assert np.all(o2["info_nats"] > 0) and np.all(o2["info_nats"][1] > o2["info_nats"][0])
    with pytest.raises(ValueError, match="codes must have shape"):
        RS.bayes_conditional(w, s, obs[:, :3], 2.0)


@pytest.mark.slow
def test_evaluator_condition_loglik_is_a_distribution():
    import ml_collections

    w = _tiny_world(n=4, m=2)
    c = ml_collections.ConfigDict({"evaluator": {"emb_dim": 8, "n_layers": 1, "n_heads": 2,
                                                 "kind": "transformer"}})
    ev = D.ListEvaluator(c, w)
    _, p, _ = ev.init(jax.random.key(0))
    p = jax.tree.map(lambda a: a * 5.0 if a.ndim else a, p)  # spread the logits
    R = 3
    ctx = D.Context(jnp.asarray(w.test.user[:R]), jnp.asarray(w.test.cands[:R]),
                    jnp.asarray(w.history[w.test.user[:R]]))
    lists = jnp.asarray(w.test.init[:R])
    tot = 0.0
    for pat in itertools.product([0, 1, 2], repeat=2):
        cond = jnp.tile(jnp.array(list(pat) + [RS.UNEXPOSED] * 2, jnp.int32)[None], (R, 1))
        tot = tot + np.exp(np.asarray(ev.condition_loglik(p, ctx, lists, cond), np.float64))
    np.testing.assert_allclose(tot, 1.0, atol=1e-4)


def test_guided_generation():
    """guide_fn = 0 changes nothing; a guide that rewards one proposal makes it the answer."""
    n, R = 5, 4
    init = jnp.asarray(np.argsort(np.random.default_rng(4).random((R, n)), 1), jnp.int32)

    def near_copy(x, t):  # prefers x_0 = x_t, but other permutations are proposals too
        return 3.0 * jax.nn.one_hot(x, n)

    kw = dict(kernel="perm_swap", sched=SCHED, t_start=4, beam=3, early_stop=False)
    a = D.generate(near_copy, init, **kw)
    b = D.generate(near_copy, init, guide_fn=lambda L: jnp.zeros(L.shape[:2]), **kw)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(np.asarray(a[0][:, 0]), np.asarray(init))  # unguided: the copy
    # a guide that penalises the initial list: the answer is the best-scored other proposal
    penal = lambda L: -50.0 * jnp.all(L == init[:, None], -1)  # noqa: E731
    seqs, scores, _ = D.generate(near_copy, init, guide_fn=penal, **kw)
    top = np.asarray(seqs[:, 0])
    assert _is_perm(top) and np.all(np.any(top != np.asarray(init), -1))
    assert np.all(np.diff(np.asarray(scores), axis=1) <= 1e-6)  # sorted by log p + guide
    # the unguided beam holds those lists too, below the copy
    assert all(any(np.array_equal(top[r], q) for q in np.asarray(a[0][r])) for r in range(R))


def test_condition_codes_rules():

    c = np.asarray(rerank.condition_codes("top_k", 2, 6, 4, top=2))
    np.testing.assert_array_equal(c[0], [RS.CLICK, RS.CLICK, RS.NO_CLICK, RS.NO_CLICK, RS.UNEXPOSED, RS.UNEXPOSED])
    assert np.all(np.asarray(rerank.condition_codes("all_positive", 2, 6, 6)) == RS.CLICK_LIKE)
    assert np.all(np.asarray(rerank.condition_codes("all_negative", 2, 6, 6)) == RS.NO_CLICK)
    with pytest.raises(ValueError, match="cond_top"):
        rerank.condition_codes("top_k", 2, 6, 4, top=5)
    with pytest.raises(ValueError, match="config.infer.condition"):
        rerank.condition_codes("most_positive", 2, 6, 4)
    with pytest.raises(ValueError, match="observed codes"):
        rerank.condition_codes("observed", 2, 6, 4)


def _tiny_rerank_config(**infer):
    from configs import dcdr_synthetic

    c = dcdr_synthetic.get_config("tiny")
    c.infer.update(infer)
    return c


@pytest.mark.slow
def test_rerank_task_end_to_end(tmp_path):
    """The launcher's rerank task on a tiny world: every row, both conditioning checks, the ideal."""
    import json

    res = rerank.train_and_evaluate(_tiny_rerank_config(), str(tmp_path))
    u = res["expected_clicks"]
    for k in ("initial", "logged", "pointwise", "dcdr", "dcdr_generator_only", "evaluator_swap_search"):
        assert np.isfinite(u[k]) and u[k] <= u["optimum"] + 1e-9, k
    assert set(res["conditioning"]) == set(rerank.CONDITIONS)
    d = res["dcdr_minus"]["initial"]
    assert abs(d["mean"] - (u["dcdr"] - u["initial"])) < 1e-9 and d["se"] >= 0
    ideal = res["conditioning_ideal"]
    assert ideal["requests"] == 10 and ideal["guidance"] == [0.0, 10.0]
    for kind in rerank.CONDITIONS:
        for w in ("w=0", "w=10"):
            assert ideal[kind][w]["kl_to_prior_nats"] >= 0
    assert isinstance(res["conditioning_holds_top_k"], bool)
    assert json.load(open(tmp_path / "results.json"))["conditioning"] == res["conditioning"]


def test_rerank_task_refuses_bad_inference_fields(tmp_path):

    with pytest.raises(ValueError, match="config.infer.condition"):
        rerank.train_and_evaluate(_tiny_rerank_config(condition="best"), str(tmp_path))
    with pytest.raises(ValueError, match="cond_top"):
        rerank.train_and_evaluate(_tiny_rerank_config(cond_top=9), str(tmp_path))
    with pytest.raises(ValueError, match="eval_guidance"):
        rerank.train_and_evaluate(_tiny_rerank_config(eval_guidance=-1.0), str(tmp_path))
