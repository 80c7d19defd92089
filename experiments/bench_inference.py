"""Benchmark of the inference path: export throughput and server latency on one trained run.

    python experiments/bench_inference.py --run=runs/diffrec_ml1m --out=results/bench_inference

Measures, in one process tree on this machine:

1. export: ``experiments/recommend.py``'s :func:`export` of every user's top-20 to Parquet
   (users/s, after one warm-up batch);
2. server latency: ``experiments/serve.py`` on loopback, one client sending ``--requests``
   history requests one after another (p50 / p99 per request);
3. server throughput: ``--clients`` concurrent clients, with request batching
   (``--max_batch``) and without (``max_batch=1``): requests/s and p50 / p99.

Histories are the users' own training rows (raw ids). Writes ``bench.json`` and ``bench.md``
under ``--out`` with the machine load at the start and the end, so the figures can be read
beside whatever else was running.
"""

import concurrent.futures as cf
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

_RUN = flags.DEFINE_string("run", None, "Run directory.")
_OUT = flags.DEFINE_string("out", "results/bench_inference", "Output folder.")
_REQUESTS = flags.DEFINE_integer("requests", 300, "Sequential requests for the latency figure.")
_CLIENTS = flags.DEFINE_integer("clients", 16, "Concurrent clients for the throughput figure.")
_PER_CLIENT = flags.DEFINE_integer("per_client", 40, "Requests per concurrent client.")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 64, "Server batch limit for the batched run.")
_K = flags.DEFINE_integer("k", 20, "List length.")
flags.mark_flags_as_required(["run"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(run: str, port: int, max_batch: int) -> subprocess.Popen:
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen([sys.executable, os.path.join(here, "serve.py"), f"--run={run}", f"--port={port}",
                             f"--max_batch={max_batch}", "--max_body_bytes=1000000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < 600:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"error: the server exited with {proc.returncode}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("error: the server did not become healthy in 600 s")


def _post(port: int, body: bytes) -> float:
    t0 = time.perf_counter()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/recommend", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
        if r.status != 200:
            raise RuntimeError(f"status {r.status}")
    return time.perf_counter() - t0


def _pcts(lat) -> dict:
    a = np.asarray(lat) * 1000.0
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "n": int(a.size)}


def _load() -> list:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    from diffrec_jax import inference
    from diffrec_jax import export as cmd

    os.makedirs(_OUT.value, exist_ok=True)
    out = {"run": os.path.abspath(_RUN.value), "load_start": _load(), "cores": os.cpu_count()}
    rec = inference.load(_RUN.value, batch_size=256)
    out["model"] = rec.describe()
    k = _K.value
    # 1. export
    cmd.export(rec, [rec.raw_user(u) for u in range(min(256, rec.n_users))], k,
               os.path.join(_OUT.value, "warmup.parquet"), exclude_seen=True, progress=False)
    res = cmd.export(rec, "all", k, os.path.join(_OUT.value, "recs.parquet"), exclude_seen=True, progress=False)
    out["export"] = res
    os.remove(os.path.join(_OUT.value, "warmup.parquet"))
    os.remove(os.path.join(_OUT.value, "recs.parquet"))
    # request bodies: users' training rows as histories
    rng = np.random.default_rng(0)
    bodies = []
    for u in rng.integers(0, rec.n_users, _REQUESTS.value + _CLIENTS.value * _PER_CLIENT.value):
        row = rec.data.train.row(int(u))
        items = rec.raw_items(row)
        bodies.append(json.dumps({"history": [x.item() for x in np.asarray(items)], "k": k}).encode())
    out["history_len_mean"] = float(np.mean([b.count(b",") + 1 for b in bodies]))
    for label, mb in (("batched", _MAX_BATCH.value), ("unbatched", 1)):
        port = _free_port()
        proc = _serve(_RUN.value, port, mb)
        try:
            for b in bodies[:20]:
                _post(port, b)  # warm the connection path
            if label == "batched":
                t0 = time.perf_counter()
                lat = [_post(port, b) for b in bodies[: _REQUESTS.value]]
                out["sequential"] = {**_pcts(lat), "req_per_s": len(lat) / (time.perf_counter() - t0)}
            conc = bodies[_REQUESTS.value:]
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(_CLIENTS.value) as ex:
                lat = list(ex.map(lambda b: _post(port, b), conc))
            dt = time.perf_counter() - t0
            out[f"concurrent_{label}"] = {**_pcts(lat), "req_per_s": len(lat) / dt, "clients": _CLIENTS.value,
                                          "max_batch": mb}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    out["load_end"] = _load()
    with open(os.path.join(_OUT.value, "bench.json"), "w") as f:
        json.dump(out, f, indent=2)
    m = out["model"]
    lines = [
        f"# Inference benchmark: {m['model']} on {m['dataset']} ({m['items']} items)", "",
        f"`python experiments/bench_inference.py --run={_RUN.value} --out={_OUT.value}`; "
        f"{out['cores']} cores, load average {out['load_start']} at the start, {out['load_end']} at the end.", "",
        "| measurement | p50 ms | p99 ms | throughput |", "| --- | --- | --- | --- |",
        f"| export, all {res['users']} users x top-{k} to Parquet | | | {res['users_per_s']:.0f} users/s |",
        f"| server, 1 client, sequential | {out['sequential']['p50_ms']:.1f} | {out['sequential']['p99_ms']:.1f} | "
        f"{out['sequential']['req_per_s']:.0f} req/s |",
    ]
    for label in ("batched", "unbatched"):
        c = out[f"concurrent_{label}"]
        lines.append(f"| server, {c['clients']} clients, max_batch {c['max_batch']} | {c['p50_ms']:.1f} | "
                     f"{c['p99_ms']:.1f} | {c['req_per_s']:.0f} req/s |")
    lines.append("")
    lines.append(f"Histories: users' training rows, {out['history_len_mean']:.0f} items on average.")
    with open(os.path.join(_OUT.value, "bench.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
