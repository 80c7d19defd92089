"""DiffuRec with collapsed padding on Amazon Beauty: speed (wall time and XLA FLOPs) and the metric spread.

A script, not a timed test. Run from the repository root, one core::

    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false OMP_NUM_THREADS=1 taskset -c 0 \\
        python experiments/diffurec_collapsed.py --out=results/diffurec_collapsed

Stages (each writes ``bench.json`` in ``--out`` as soon as it ends, so a stopped run keeps what it
measured):

1. ``train_faithful``: the faithful training step (``configs/diffurec_beauty.py``, L = 50 columns),
   ``--faithful_steps`` timed steps after a compiling one; the epoch (257 steps) is extrapolated.
2. ``train_collapsed``: one *full* epoch of the ``:collapsed`` variant (length-bucketed batches,
   one program per width, each compiled ahead of time and not timed). Its parameters are kept
   (``--params``) and used by the next stages: a briefly trained model.
3. ``eval``: the faithful evaluation of ``--spread_rows`` seeded validation rows (extrapolated per
   row to the split: its cost does not depend on the history) and a *full* validation pass of the
   collapsed evaluation (``eval.collapse_padding``), both with ``sequences.eval_plan`` /
   ``make_eval_step`` / ``average_rows`` as ``eval_split`` uses them, every width compiled ahead
   of time (compile time reported apart).
4. ``spread``: on the same rows, ``--repeats`` more faithful evaluations with other evaluation keys
   (the reference's per-position lambda and reverse noise redrawn) and ``--collapsed_repeats``
   collapsed ones; the collapsed metrics are compared with the faithful spread.

FLOPs: XLA's cost analysis of each compiled program (``experiments/bench/common.py:xla_flops``).
XLA counts a ``while`` loop's body once, so an evaluation step (the 32-step reverse chain is a
``lax.scan``) is counted as ``cost(step) + (T - 1) * cost(one Approximator call)``, the latter
from its own compiled program at the same width; the training step has no inner loop.
Reference times (one thread, diffurec.md "Measured here"): 2,090 s per epoch, 2,590 s per pass.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

from bench.common import REFERENCE_SPEED, machine_load, xla_flops  # noqa: E402
from configs import diffurec_beauty  # noqa: E402
from diffrec_jax import models  # noqa: E402
from diffrec_jax.data import load  # noqa: E402
from diffrec_jax import batching  # noqa: E402
from diffrec_jax.training import sequences  # noqa: E402
from diffrec_jax.training.optim import make_optimizer  # noqa: E402
from diffrec_jax.training.steps import init_state  # noqa: E402
from diffrec_jax.data.sequences import SeqSplit  # noqa: E402
from diffrec_jax.models.diffurec import collapsed_padding_bias  # noqa: E402

REF = REFERENCE_SPEED[("diffurec", "amazon_beauty")]


def _save(out_dir, res):
    with open(os.path.join(out_dir, "bench.json"), "w") as f:
        json.dump(res, f, indent=1, default=float)


def _compile_chunk(fn, state, arrays, ib, mb, k):
    lowered = fn.lower(state, arrays, ib[None], mb[None], np.ones(1, bool), k)
    t0 = time.perf_counter()
    c = lowered.compile()
    return c, time.perf_counter() - t0, xla_flops(c)


def train_faithful(cfg, data, steps: int) -> dict:
    model = models.get_model(cfg, data)
    N, bs = len(data.train), int(cfg.train.batch_size)
    spe = -(-N // bs)
    tx = make_optimizer(cfg.optim, spe)
    k_init, k_train, _ = jax.random.split(jax.random.key(int(cfg.seed)), 3)
    state = init_state(model, tx, k_init)
    arrays = sequences.split_arrays(data.train)
    idx, mask = batching.epoch_batches(N, bs, int(cfg.seed), 1, "permutation")
    c, c_s, flops = _compile_chunk(sequences.make_train_chunk(model, tx), state, arrays, idx[0], mask[0], k_train)
    state, ls = c(state, arrays, idx[0][None], mask[0][None], np.ones(1, bool), k_train)
    jax.block_until_ready(ls)
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(1, steps + 1):
        state, ls = c(state, arrays, idx[s][None], mask[s][None], np.ones(1, bool), k_train)
    jax.block_until_ready(ls)
    dt, dc = (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps
    return {"steps_per_epoch": spe, "timed_steps": steps, "step_s": dt, "epoch_s": dt * spe,
            "epoch_cpu_s": dc * spe, "compile_s": c_s, "gflop_per_step": flops / 1e9,
            "tflop_per_epoch": flops * spe / 1e12, "gflops_per_s": flops / dt / 1e9,
            "speedup_vs_reference": REF["epoch_s"] / (dt * spe)}


def train_collapsed(cfg, data) -> tuple[dict, object, object]:
    model = models.get_model(cfg, data)
    bs = int(cfg.train.batch_size)
    bucket_N, widths = sequences.train_bucket_index(model, data, tuple(cfg.train.length_buckets))
    batches = batching.bucketed_epoch_batches(bucket_N, len(widths), bs, int(cfg.seed), 1)
    spe = len(batches)
    tx = make_optimizer(cfg.optim, spe)
    k_init, k_train, _ = jax.random.split(jax.random.key(int(cfg.seed)), 3)
    state = init_state(model, tx, k_init)
    arrays = sequences.split_arrays(data.train)
    compiled, per_w = {}, {}
    comp_s = 0.0
    for b, ib, mb in batches:
        w = widths[b]
        if w not in compiled:
            fn = sequences.make_train_chunk(model, tx, None if w == data.max_len else w)
            compiled[w] = _compile_chunk(fn, state, arrays, ib, mb, k_train)
            comp_s += compiled[w][1]
            print(f"  compiled width {w}: {compiled[w][1]:.1f} s, {compiled[w][2] / 1e9:.1f} GFLOP", flush=True)
        per_w[w] = per_w.get(w, 0) + 1
    t0, c0 = time.perf_counter(), time.process_time()
    losses = []
    for b, ib, mb in batches:
        state, ls = compiled[widths[b]][0](state, arrays, ib[None], mb[None], np.ones(1, bool), k_train)
        losses.append(ls)
    losses = np.concatenate(jax.device_get(losses))
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    flops = sum(compiled[w][2] * n for w, n in per_w.items())
    tokens = sum(w * n for w, n in per_w.items()) * bs
    res = {"steps_per_epoch": spe, "epoch_s": dt, "epoch_cpu_s": dc, "compile_s": comp_s,
           "widths": {str(w): n for w, n in sorted(per_w.items())},
           "tokens_per_epoch": tokens, "tokens_per_epoch_faithful": 257 * bs * data.max_len,
           "tflop_per_epoch": flops / 1e12, "gflops_per_s": flops / dt / 1e9,
           "loss_mean": float(losses.mean()), "loss_last": float(losses[-1]),
           "speedup_vs_reference": REF["epoch_s"] / dt}
    return res, state, model


def _approx_flops(model, params, width: int, bs: int) -> float:
    """XLA FLOPs of one Approximator call (dropout off) on ``bs`` rows of ``width`` columns."""
    net = model.net(params)

    def f(params, seq, x, t, keys):
        net = model.net(params)
        S, mask = net.history(seq, None)
        bias = collapsed_padding_bias(mask, model.L) if model.collapse_eval else None
        return net.approximator(S, mask, x, t, model.num_steps, model.lam_mean, model.lam_std, keys,
                                full_len=model.L, key_bias_BxL=bias)

    del net
    args = (params, jnp.zeros((bs, width), jnp.int32), jnp.zeros((bs, model.mcfg.hidden)),
            jnp.zeros((bs,), jnp.int32), jax.random.split(jax.random.key(0), bs))
    return xla_flops(jax.jit(f).lower(*args))


_MODELS: dict = {}


def _model(name, cfg, data):
    """One model object per evaluation form (the evaluator caches compiled steps per model)."""
    if name not in _MODELS:
        _MODELS[name] = models.get_model(cfg, data)
        _MODELS[name].init(jax.random.key(0))
    return _MODELS[name]


_COMPILED: dict = {}


def eval_rows(name, cfg, data, params, rows: np.ndarray, key) -> dict:
    """One evaluation of validation ``rows`` as ``sequences.eval_split`` does it (same plan, same
    per-row keys, same averaging), with each width's step compiled ahead of time (not timed) so
    that the timed part is the batches alone; FLOPs from the compiled programs."""
    model = _model(name, cfg, data)
    sp = data.valid
    sub = SeqSplit(sp.seq[rows], sp.lengths[rows], sp.targets[rows])
    arr = sequences.split_arrays(sub)
    n = rows.size
    bs = min(int(cfg.eval.batch_size), n)
    ks = tuple(int(k) for k in cfg.eval.topk)
    plan = sequences.eval_plan(model, n, bs, lengths=sub.lengths, buckets=sequences.eval_length_buckets(cfg),
                        max_len=data.max_len)
    step = {}
    comp_s = 0.0
    for w, _ in plan:
        if (name, w, n) not in _COMPILED:
            fn = sequences.make_eval_step(model, ks, data.pad_id, bool(cfg.eval.get("score_padding", True)), w)
            t0 = time.perf_counter()
            c = fn.lower(params, {}, arr, jnp.zeros((bs,), jnp.int32), key).compile()
            width = data.max_len if w is None else w
            _COMPILED[(name, w, n)] = (c, xla_flops(c) + (model.num_steps - 1) * _approx_flops(model, params, width, bs))
            comp_s += time.perf_counter() - t0
        step[w] = _COMPILED[(name, w, n)]
    names = sequences.metric_names(ks)
    vals = np.zeros((n, len(names)), np.float32)
    per_w: dict = {}
    total = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    for w, r in plan:
        idx, _ = batching.padded_batches(r.astype(np.int32), bs)
        outs = [step[w][0](params, {}, arr, idx[b], key) for b in range(idx.shape[0])]
        vals[r] = np.concatenate(jax.device_get(outs), 0)[: r.size]
        width = str(data.max_len if w is None else w)
        per_w[width] = per_w.get(width, 0) + idx.shape[0]
        total += idx.shape[0] * step[w][1]
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    exact = sequences.average_rows(vals, names)
    ref = sequences.average_rows(vals, names, batch_mean_of=int(cfg.eval.get("batch_mean_of", 0) or 0))
    return {"rows": n, "pass_s": dt, "pass_cpu_s": dc, "compile_s": comp_s, "batches_per_width": per_w,
            "tflop": total / 1e12, "gflops_per_s": total / dt / 1e9, "gflops_per_cpu_s": total / dc / 1e9,
            "metrics_exact": exact, "metrics_reference": ref}


def probe(cfg_f, cfg_ce, data, params, rows, key) -> dict:
    """Finer than the metrics: how far the scored vector and the target's rank move between two
    faithful evaluations with different keys (the reference's own randomness) and between the
    faithful and the collapsed evaluation with the same key (the pad lambda draws only; the
    collapsed form is run at the full width, equal to its minimal width to float tolerance)."""
    sp = data.valid
    seq = jnp.asarray(sp.seq[rows])
    tgt = jnp.asarray(sp.targets[rows])
    mf, mc = _model("faithful", cfg_f, data), _model("collapsed", cfg_ce, data)
    E = jnp.asarray(params["item_emb"][...])

    def run(model, k):
        keys = jax.vmap(lambda i: jax.random.fold_in(k, i))(jnp.asarray(rows))
        x = jax.jit(lambda p, s, kk: model.generate(p, {"seq": s}, kk))(params, seq, keys)
        sc = x @ E.T
        return x, sequences.target_rank(sc, tgt), jax.lax.top_k(sc, 10)[1]

    k2 = jax.random.fold_in(key, 77)
    fa, fb, ca = run(mf, key), run(mf, k2), run(mc, key)

    def cmp(a, b):
        rel = jnp.linalg.norm(a[0] - b[0], axis=1) / jnp.linalg.norm(a[0], axis=1)
        ov = jnp.mean(jnp.any(a[2][:, :, None] == b[2][:, None, :], axis=2), axis=1)
        dr = jnp.abs(a[1] - b[1])
        return {"rel_l2_mean": float(rel.mean()), "rel_l2_max": float(rel.max()),
                "top10_overlap": float(ov.mean()), "target_rank_abs_change_mean": float(dr.mean()),
                "target_rank_changed_fraction": float(jnp.mean(dr > 0))}

    return {"rows": int(len(rows)), "faithful_vs_faithful_other_key": cmp(fa, fb),
            "faithful_vs_collapsed_same_key": cmp(fa, ca)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/diffurec_collapsed")
    p.add_argument("--stages", default="train_faithful,train_collapsed,eval,spread")
    p.add_argument("--faithful_steps", type=int, default=6)
    p.add_argument("--spread_rows", type=int, default=1024,
                   help="validation rows of the faithful timing and of the spread")
    p.add_argument("--repeats", type=int, default=4, help="faithful evaluations of the spread rows")
    p.add_argument("--collapsed_repeats", type=int, default=2)
    p.add_argument("--probe_rows", type=int, default=512)
    p.add_argument("--spread_forms", default="faithful,collapsed",
                   help="which forms the spread stage evaluates (results add to bench.json's)")
    p.add_argument("--params", default="runs/diffurec_collapsed_bench/params.pkl",
                   help="where the collapsed epoch's parameters are kept (outside git)")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    stages = a.stages.split(",")
    path = os.path.join(a.out, "bench.json")
    res = json.load(open(path)) if os.path.exists(path) else {}
    cmd = ("XLA_FLAGS=--xla_cpu_multi_thread_eigen=false OMP_NUM_THREADS=1 taskset -c 0 "
           "python experiments/diffurec_collapsed.py " + " ".join(sys.argv[1:] if argv is None else argv))
    prev = res.get("commands", []) + ([res.pop("command")] if "command" in res else [])
    res["commands"] = prev + [cmd]  # one per invocation (stages may be split over several)
    res["machine"] = machine_load()
    res["reference_1thread"] = REF
    cfg_f = diffurec_beauty.get_config("faithful")
    cfg_c = diffurec_beauty.get_config("collapsed")
    cfg_ce = diffurec_beauty.get_config("faithful")
    cfg_ce.eval.collapse_padding = True  # the faithful model evaluated with collapsed padding
    data = load(cfg_f.data)
    print(data, flush=True)

    if "train_faithful" in stages:
        res["train_faithful"] = train_faithful(cfg_f, data, a.faithful_steps)
        print("train_faithful", res["train_faithful"], flush=True)
        _save(a.out, res)
    params = None
    if "train_collapsed" in stages:
        r, state, _ = train_collapsed(cfg_c, data)
        res["train_collapsed"] = r
        print("train_collapsed", r, flush=True)
        params = jax.device_get(state.params)
        os.makedirs(os.path.dirname(a.params), exist_ok=True)
        with open(a.params, "wb") as f:
            pickle.dump(params, f)
        _save(a.out, res)
    if params is None:
        with open(a.params, "rb") as f:
            params = pickle.load(f)
    _, _, k_eval = jax.random.split(jax.random.key(int(cfg_f.seed)), 3)
    k_valid = jax.random.fold_in(k_eval, 0)
    nv = len(data.valid)
    rows_s = np.sort(np.random.default_rng(1).choice(nv, a.spread_rows, replace=False))
    spread = res.get("spread") or {"rows": int(rows_s.size), "faithful": [], "collapsed": []}
    forms = a.spread_forms.split(",")
    # the faithful form first, then the collapsed one
    for name, cfg, reps in (("faithful", cfg_f, a.repeats), ("collapsed", cfg_ce, a.collapsed_repeats)):
        if "eval" in stages:
            rows = rows_s if name == "faithful" else np.arange(nv)
            r = eval_rows(name, cfg, data, params, rows, k_valid)
            if name == "faithful":
                f = nv / r["rows"]
                r.update(pass_s_extrapolated=r["pass_s"] * f, pass_cpu_s_extrapolated=r["pass_cpu_s"] * f,
                         tflop_extrapolated=r["tflop"] / (r["batches_per_width"]["50"] * 512) * (-(-nv // 512) * 512))
                r["speedup_vs_reference"] = REF["valid_pass_s"] / r["pass_s_extrapolated"]
                r["speedup_vs_reference_per_cpu_s"] = REF["valid_pass_s"] / r["pass_cpu_s_extrapolated"]
                spread["faithful"].append({"pass_s": r["pass_s"], "key": "eval", **r["metrics_exact"]})
            else:
                r["speedup_vs_reference"] = REF["valid_pass_s"] / r["pass_s"]
                r["speedup_vs_reference_per_cpu_s"] = REF["valid_pass_s"] / r["pass_cpu_s"]
            res[f"eval_{name}"] = r
            print(f"eval_{name}", r, flush=True)
            _save(a.out, res)
        if "spread" in stages and name in forms:
            for rep in range(reps):
                key = jax.random.fold_in(k_valid, 1000 + rep)
                r = eval_rows(name, cfg, data, params, rows_s, key)
                spread[name].append({"pass_s": r["pass_s"], "key": 1000 + rep, **r["metrics_exact"]})
                print("spread", rep, name, r["metrics_exact"], flush=True)
                res["spread"] = spread
                _save(a.out, res)
    if "spread" in stages:
        out = spread
        names = [k for k in out["faithful"][0] if k.startswith(("hr@", "ndcg@"))]
        summ = {}
        for k in names:
            f = np.array([r[k] for r in out["faithful"]])
            c = np.array([r[k] for r in out["collapsed"]])
            summ[k] = {"faithful_mean": f.mean(), "faithful_std": f.std(ddof=1) if f.size > 1 else 0.0, "faithful_min": f.min(),
                       "faithful_max": f.max(), "collapsed_mean": c.mean(), "collapsed_std": c.std(ddof=1) if c.size > 1 else 0.0,
                       "collapsed_min": c.min(), "collapsed_max": c.max(),
                       "collapsed_mean_within_faithful_range": bool(f.min() <= c.mean() <= f.max()),
                       "collapsed_mean_within_2sd": bool(abs(c.mean() - f.mean()) <= 2 * (f.std(ddof=1) if f.size > 1 else 0) + 1e-12)}
        out["summary"] = summ
        res["spread"] = out
        _save(a.out, res)
        print(json.dumps(summ, indent=1, default=float), flush=True)
    if "probe" in stages:
        res["probe"] = probe(cfg_f, cfg_ce, data, params, rows_s[: a.probe_rows], k_valid)
        print("probe", res["probe"], flush=True)
        _save(a.out, res)
    res["machine_end"] = machine_load()
    _save(a.out, res)


if __name__ == "__main__":
    main()
