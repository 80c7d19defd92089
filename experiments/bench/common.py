"""What the benchmark parts share: environment probes, timing, memory, XLA FLOPs, data, evaluation.

Also the one place the suite imports the trainer's functions from (see the import block below),
and the references' own speed figures (:data:`REFERENCE_SPEED`, :data:`DIFFREC_REFERENCE`).
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffrec_jax.data import load_diffrec_npy, make_synthetic

# The training functions used by the parts; imported here only, so that moving them is a
# one-place change. The parts import them from this module.
from diffrec_jax.cli import override  # noqa: F401  (re-exported to the parts)
from diffrec_jax.training import train_and_evaluate  # noqa: F401
from diffrec_jax.batching import padded_batches  # noqa: F401
from diffrec_jax.training.interactions import DeviceData, make_eval_step, make_train_step  # noqa: F401
from diffrec_jax.training.optim import make_optimizer  # noqa: F401
from diffrec_jax.training.steps import TrainState, init_state  # noqa: F401

from . import ROOT

MB = 1024.0**2
GB = 1024.0**3

# The references' own figures on this workplace's CPU, one thread, from the specs' "Measured
# here" sections (seconds): dreamrec.md section 13, diffurec.md "Measured here".
REFERENCE_SPEED = {
    ("dreamrec", "yc"): {"epoch_s": 114.0, "valid_pass_s": 232.0, "test_pass_s": 257.0},
    ("sasrec", "yc"): {"epoch_s": 164.0, "valid_pass_s": 13.1, "test_pass_s": 12.8},
    ("diffurec", "amazon_beauty"): {"epoch_s": 2090.0, "valid_pass_s": 2590.0, "test_pass_s": 2590.0},
}

# The PyTorch DiffRec reference on ML-1M clean, best configuration, same kind of 2-core machine,
# quiet (seconds; diffrec.md section 14): a training epoch with 1 and 2 threads, and the range of
# its valid + test evaluations (it scores the users twice, once per split).
DIFFREC_REFERENCE = {"epoch_s_1thread": 3.7, "epoch_s_2threads": 3.25, "eval_s": (77.8, 89.1)}


# ----------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded (NaNs where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return [float("nan")] * 3


def machine_load() -> dict:
    """One-minute load average, CPU count and the busiest other processes (for speed reports)."""
    info = {"loadavg_1m": os.getloadavg()[0], "cpus": os.cpu_count()}
    try:
        import subprocess

        ps = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"], capture_output=True,
                            text=True, timeout=10).stdout.splitlines()[1:7]
        info["top_processes"] = [" ".join(ln.split()[:2] + [" ".join(ln.split()[2:])[:100]]) for ln in ps]
    except Exception:  # noqa: BLE001 - informative only
        pass
    return info


def gpu_devices() -> list:
    """The GPU devices JAX sees (empty on a CPU-only machine)."""
    return [d for d in jax.devices() if d.platform == "gpu"]


def gpu_note() -> str:
    """One line saying whether a GPU took part in this session."""
    gpus = gpu_devices()
    if not gpus:
        return "no GPU in this session: every number below is CPU-only"
    return f"GPU present: {', '.join(str(d) for d in gpus)}"


def environment() -> dict:
    """Machine facts recorded with every result: devices, cores, versions, load average."""
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "devices": [str(d) for d in jax.devices()],
        "backend": jax.default_backend(),
        "gpu": gpu_note(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "loadavg_start": loadavg(),
    }


def short_error(e: BaseException, limit: int = 160) -> str:
    """``"Type: first line of the message"``, cut to ``limit`` characters (for report rows)."""
    msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------------
# FLOPs and timing
# ----------------------------------------------------------------------------------------------


def xla_flops(compiled) -> float:
    """FLOPs of one call of an AOT-compiled function, from XLA's cost analysis (NaN if absent).

    XLA counts the body of a ``while`` loop (``lax.scan``) once, not once per iteration.
    """
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (some backends do not implement it)
        return float("nan")
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if not ca:
        return float("nan")
    return float(ca.get("flops", float("nan")))


def block(tree):
    """Waits for every array of ``tree`` and returns it."""
    return jax.block_until_ready(tree)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Calls ``fn()``, waits for its arrays and returns ``(result, seconds)``."""
    t0 = time.perf_counter()
    out = block(fn())
    return out, time.perf_counter() - t0


def time_repeats(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        block(fn())
    return [timed(fn)[1] for _ in range(max(1, repeats))]


def matmul_ceiling(n: int = 2048, reps: int = 10) -> float:
    """Best float32 GFLOP/s of an ``n x n x n`` jitted matmul, measured now on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    times = time_repeats(lambda: f(a, a), reps)
    return 2.0 * n**3 / min(times) / 1e9


# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------


def reset_peak_rss() -> bool:
    """Resets the process's resident-set high-water mark (Linux ``clear_refs``); False if it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Process max RSS (``resource.getrusage``; since the last :func:`reset_peak_rss`)."""
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(ru if sys.platform == "darwin" else ru * 1024)


def device_peak_bytes() -> int | None:
    """Peak bytes in use on the first GPU (``memory_stats``), or None on CPU / when unavailable."""
    for d in gpu_devices():
        try:
            stats = d.memory_stats() or {}
        except Exception:  # noqa: BLE001
            return None
        if "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"])
    return None


def mem_available_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def resolve_data_dir(data_dir: str) -> str | None:
    """``data_dir`` if it holds DiffRec files (relative to the cwd or to the repository root)."""
    if not data_dir:
        return None
    for base in (os.getcwd(), ROOT):
        path = os.path.join(base, data_dir)
        if os.path.exists(os.path.join(path, "train_list.npy")):
            return os.path.abspath(path)
    return None


def load_ml1m(data_dir: str) -> tuple[Any, str]:
    """ML-1M clean from ``data_dir``, else synthetic data of its shape; returns ``(data, note)``."""
    path = resolve_data_dir(data_dir)
    if path:
        return load_diffrec_npy(path), f"ml-1m_clean from {path}"
    data = make_synthetic(5949, 2810, mean_items_per_user=68, seed=0, name="synthetic_ml1m_shape")
    return data, f"{data_dir!r} absent: synthetic data of ML-1M clean's shape (5949 x 2810)"


def quick_data() -> tuple[Any, str]:
    """The tiny synthetic dataset of ``--quick`` runs, with its note."""
    return (make_synthetic(600, 400, mean_items_per_user=30, seed=0, name="synthetic_quick"),
            "quick: synthetic 600 users x 400 items")


# ----------------------------------------------------------------------------------------------
# Full-ranking evaluation (parts 1 and 2)
# ----------------------------------------------------------------------------------------------


class ScoreModel:
    """The evaluator's model contract around a plain ``score(params, model_state, x, keys)``."""

    needs_user_ids = False

    def __init__(self, score_fn: Callable):
        self.score = score_fn


def compile_eval(model, ks, params, model_state, dd, eidx, emask, key):
    """AOT-compiles the evaluator's step; returns ``(compiled, compile_s, flops_per_batch)``."""
    step = make_eval_step(model, tuple(ks))
    args = (params, model_state, (dd.x_train, dd.truth_valid, dd.truth_test))
    t0 = time.perf_counter()
    compiled = step.lower(*args, eidx[0], emask[0], key).compile()
    return compiled, time.perf_counter() - t0, xla_flops(compiled)


def eval_pass(compiled, params, model_state, dd, eidx, emask, key):
    """One full-ranking pass over the user batches; returns the summed ``(valid, test)`` metrics."""
    ddt = (dd.x_train, dd.truth_valid, dd.truth_test)
    acc = None
    for b in range(eidx.shape[0]):
        out = compiled(params, model_state, ddt, eidx[b], emask[b], key)
        acc = out if acc is None else jax.tree.map(jnp.add, acc, out)
    return jax.device_get(block(acc))
