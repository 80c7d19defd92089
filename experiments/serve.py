"""Serve a trained run over HTTP (loopback by default): ``POST /recommend``, ``GET /health``.

    python experiments/serve.py --run=runs/quickstart --port=8080
    curl -s localhost:8080/health
    curl -s -X POST localhost:8080/recommend -d '{"history": [1, 5, 42], "k": 10}'
    curl -s -X POST localhost:8080/recommend -d '{"user": 17, "k": 10}'

Needs the ``serve`` extra (``pip install -e ".[serve]"``: Starlette and uvicorn). Every scorer
is compiled before ``/health`` answers 200; see :mod:`diffrec_jax.serving` for the request
format, the error answers and the batching of concurrent requests.
"""

import logging as std_logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

_RUN = flags.DEFINE_string("run", None, "Run directory written by experiments/main.py.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (loopback by default).")
_PORT = flags.DEFINE_integer("port", 8080, "Port.")
_MAX_BODY = flags.DEFINE_integer("max_body_bytes", 64 * 1024, "Largest request body accepted.")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 64, "Most concurrent requests scored together.")
_WAIT_MS = flags.DEFINE_float("batch_wait_ms", 2.0, "Wait for more requests after the first (ms).")
_MAX_K = flags.DEFINE_integer("max_k", 100, "Largest k a request may ask.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampler seed for histories.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "The dataset folder, if it moved since training.")
flags.mark_flags_as_required(["run"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.ERROR)
    std_logging.getLogger("absl").setLevel(std_logging.ERROR)
    try:
        import uvicorn
    except ImportError:
        raise SystemExit('error: serving needs the serve extra: pip install -e ".[serve]"') from None
    from diffrec_jax import inference, serving

    try:
        rec = inference.load(_RUN.value, data_dir=_DATA_DIR.value, batch_size=_MAX_BATCH.value)
    except inference.InferenceError as e:
        raise SystemExit(f"error: {e}") from None
    if rec.task == "rerank":
        raise SystemExit(f"error: {_RUN.value}: a DCDR run reranks candidate sets; serving covers top-K models")
    application = serving.make_app(rec, max_body_bytes=_MAX_BODY.value, max_batch=_MAX_BATCH.value,
                                   batch_wait_ms=_WAIT_MS.value, max_k=_MAX_K.value, seed=_SEED.value)
    print(f"serving {rec.describe()['model']} from {rec.run_dir} on http://{_HOST.value}:{_PORT.value} "
          "(compiling; GET /health answers 200 when ready)", flush=True)
    uvicorn.run(application, host=_HOST.value, port=_PORT.value, log_level="warning", access_log=False)


if __name__ == "__main__":
    app.run(main)
