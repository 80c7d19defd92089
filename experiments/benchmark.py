"""Speed benchmark of DiffRec training and evaluation (a script, never a timed unit test).

    python experiments/benchmark.py --data_dir=../shared/data/diffrec/ml-1m_clean --out=results/bench

Reports, in one process: compile time of the train step and of the evaluation step (apart),
seconds per training epoch and per full evaluation (validation + test share one score pass),
achieved GFLOP/s from XLA's cost analysis beside a float32 matmul ceiling measured in the same
run, and the ratios to the PyTorch reference's figures (``shared/specs/diffrec.md`` section 14).
Without ``--data_dir`` it runs on synthetic data of the same shape as ML-1M clean.
"""

import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from configs import diffrec_ml1m  # noqa: E402
from diffrec_jax import models, train  # noqa: E402
from diffrec_jax.data import load_diffrec_npy, make_synthetic  # noqa: E402

_DATA = flags.DEFINE_string("data_dir", "", "DiffRec-format folder (default: synthetic, ML-1M sized).")
_OUT = flags.DEFINE_string("out", "results/bench", "Output folder for bench.json / bench.md.")
_EPOCHS = flags.DEFINE_integer("epochs", 5, "Timed training epochs (after one warm-up epoch).")
_EVALS = flags.DEFINE_integer("evals", 2, "Timed full evaluations (after one warm-up).")

# PyTorch reference, same kind of machine, quiet (spec section 14).
REF = {"epoch_s_1thread": 3.7, "epoch_s_2threads": 3.25, "eval_s": (77.8, 89.1)}


def _flops(compiled) -> float:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0]
    return float(ca.get("flops", float("nan"))) if ca else float("nan")


def diffrec_eval_flops(cfg, n_items: int, batch: int) -> float:
    """FLOPs of one evaluation batch of DiffRec's reverse chain (2 per multiply-add).

    Generic chain: T full forward passes. Projected chain (``sampling.fast``): per step the
    hidden layers plus the ``H_last x H_1`` product, and one ``I``-wide projection at each end.
    """
    dims = list(cfg.model.dims)
    out_dims = dims + [n_items]
    in_dims = out_dims[::-1]
    e = cfg.model.emb_size
    layers = [(in_dims[0] + e, in_dims[1])] + list(zip(in_dims[1:-1], in_dims[2:]))
    layers += list(zip(out_dims[:-1], out_dims[1:]))
    T = cfg.diffusion.steps
    if not cfg.sampling.get("fast", True) or cfg.sampling.noise:
        per_user = T * (sum(i * o for i, o in layers) + e * e)
    else:
        h1, h_last = in_dims[1], out_dims[-2]
        middle = sum(i * o for i, o in layers[1:-1])
        per_user = T * (middle + h_last * h1 + e * e + e * h1) + n_items * h1 + h_last * n_items
    return 2.0 * per_user * batch


def matmul_ceiling(n: int = 2048, reps: int = 10) -> float:
    """float32 GFLOP/s of an n x n x n matmul in JAX on this machine, now."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def main(argv):
    del argv
    cfg = diffrec_ml1m.get_config()
    data = load_diffrec_npy(_DATA.value) if _DATA.value else make_synthetic(
        5949, 2810, mean_items_per_user=68, seed=0
    )
    model = models.get_model(cfg, data)
    tx = train.make_optimizer(cfg.optim)
    state = train.init_state(model, tx, jax.random.key(0))
    dd = train.DeviceData.from_data(data)
    U, B = data.n_users, cfg.train.batch_size
    step = train.make_train_step(model, tx)
    idx, mask = train.padded_batches(np.random.default_rng(0).permutation(U), B)
    key = jax.random.key(1)

    t0 = time.perf_counter()
    lowered = step.lower(state, dd.x_train, idx[0], mask[0], key)
    compiled_step = lowered.compile()
    compile_train_s = time.perf_counter() - t0
    step_flops = _flops(compiled_step)

    def run_epoch(state):
        losses = []
        for b in range(idx.shape[0]):
            state, loss = compiled_step(state, dd.x_train, idx[b], mask[b], jax.random.fold_in(key, b))
            losses.append(loss)
        jax.block_until_ready(losses)
        return state

    state = run_epoch(state)  # warm-up
    epoch_times = []
    for _ in range(_EPOCHS.value):
        t0 = time.perf_counter()
        state = run_epoch(state)
        epoch_times.append(time.perf_counter() - t0)

    ks = tuple(cfg.eval.topk)
    eval_step = train.make_eval_step(model, ks)
    eidx, emask = train.padded_batches(np.arange(U), min(cfg.eval.batch_size, U))
    args = (state.params, state.model_state, (dd.x_train, dd.truth_valid, dd.truth_test))
    t0 = time.perf_counter()
    compiled_eval = eval_step.lower(*args, eidx[0], emask[0], key).compile()
    compile_eval_s = time.perf_counter() - t0
    # XLA's cost analysis counts a scan body once, not once per step: count the chain by hand.
    eval_flops_batch = diffrec_eval_flops(cfg, data.n_items, eidx.shape[1])

    def run_eval():
        out = [compiled_eval(*args, eidx[b], emask[b], key) for b in range(eidx.shape[0])]
        jax.block_until_ready(out)

    run_eval()
    eval_times = []
    for _ in range(_EVALS.value):
        t0 = time.perf_counter()
        run_eval()
        eval_times.append(time.perf_counter() - t0)

    ceiling = matmul_ceiling()
    epoch_s = float(np.median(epoch_times))
    eval_s = float(np.median(eval_times))
    epoch_flops = step_flops * idx.shape[0]
    eval_flops = eval_flops_batch * eidx.shape[0]
    load = os.getloadavg()
    res = {
        "device": str(jax.devices()[0]),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_end": load,
        "data": data.name,
        "users": U,
        "items": data.n_items,
        "compile_train_step_s": compile_train_s,
        "compile_eval_step_s": compile_eval_s,
        "epoch_s": epoch_s,
        "epoch_s_all": epoch_times,
        "eval_s": eval_s,
        "eval_s_all": eval_times,
        "train_gflop_per_epoch": epoch_flops / 1e9,
        "train_gflops_per_s": epoch_flops / epoch_s / 1e9,
        "eval_tflop": eval_flops / 1e12,
        "eval_gflops_per_s": eval_flops / eval_s / 1e9,
        "matmul_ceiling_gflops_per_s": ceiling,
        "speedup_epoch_vs_ref_2threads": REF["epoch_s_2threads"] / epoch_s,
        "speedup_epoch_vs_ref_1thread": REF["epoch_s_1thread"] / epoch_s,
        "speedup_eval_vs_ref": [r / eval_s for r in REF["eval_s"]],
        "train_fraction_of_ceiling": epoch_flops / epoch_s / 1e9 / ceiling,
    }
    os.makedirs(_OUT.value, exist_ok=True)
    with open(os.path.join(_OUT.value, "bench.json"), "w") as f:
        json.dump(res, f, indent=2)
    md = [
        f"DiffRec on {data.name} ({U} users x {data.n_items} items), {res['device']}, "
        f"{res['cpu_count']} cores, load average at end {load[0]:.2f} (other jobs were running "
        "when it is well above 0)",
        "",
        "| quantity | diffrec_jax | PyTorch reference | ratio |",
        "| --- | --- | --- | --- |",
        f"| training epoch (s) | {epoch_s:.2f} | 3.25 (2 threads), 3.7 (1 thread) | "
        f"{res['speedup_epoch_vs_ref_2threads']:.1f}x faster than 2 threads |",
        f"| full evaluation, valid + test (s) | {eval_s:.1f} | 77.8-89.1 | "
        f"{min(res['speedup_eval_vs_ref']):.1f}-{max(res['speedup_eval_vs_ref']):.1f}x faster |",
        f"| compile: train step / eval step (s) | {compile_train_s:.1f} / {compile_eval_s:.1f} | - | - |",
        f"| training GFLOP/s (XLA cost analysis) | {res['train_gflops_per_s']:.0f} "
        f"({epoch_flops / 1e9:.0f} GFLOP/epoch) | ~20 | - |",
        f"| evaluation GFLOP/s | {res['eval_gflops_per_s']:.0f} ({res['eval_tflop']:.2f} TFLOP) | ~40 | - |",
        f"| float32 matmul ceiling, measured now (GFLOP/s) | {ceiling:.0f} | - | - |",
        f"| training at ... of that ceiling | {100 * res['train_fraction_of_ceiling']:.0f} % | - | - |",
    ]
    text = "\n".join(md)
    print(text)
    with open(os.path.join(_OUT.value, "bench.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
