"""Inference on trained runs (diffrec_jax.inference, experiments/recommend.py, experiments/serve.py).

The defining check: lists from a reloaded run reproduce the run's own validation metrics (the
evaluation's masking and keys), for one model of each family. Then raw ids, determinism, sampler
choice, every bad input, the export command and the HTTP server over loopback.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import seq_test  # noqa: E402
from configs import test as test_config  # noqa: E402
from diffrec_jax import inference, metrics  # noqa: E402
from diffrec_jax.data.tabular import Table, load_table, write_diffrec_npy  # noqa: E402
from diffrec_jax import training  # noqa: E402
from diffrec_jax.training import rerank  # noqa: E402

FAMILIES = {  # name -> model fields: one model of each interaction family
    "diffrec": {},
    "ease": {},
    "multvae": {},
    "lightgcn": {},
}


def _interaction_config(name, **fields):
    c = test_config.get_config()
    c.model.name = name
    c.train.num_epochs = 2
    c.train.eval_every_epochs = 2
    for k, v in fields.items():
        c.model[k] = v
    return c


class _Runs(dict):
    """Tiny trained runs, trained on first use (one per family)."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, name):
        wd = str(self.root / name)
        if name in FAMILIES:
            training.train_and_evaluate(_interaction_config(name, **FAMILIES[name]), wd)
        else:
            c = seq_test.get_config(name)
            c.train.num_epochs = 2
            c.eval.score_padding = False
            training.train_and_evaluate(c, wd)
        self[name] = wd
        return wd


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return _Runs(tmp_path_factory.mktemp("runs"))


def _snapshot(d):
    return sorted((str(p.relative_to(d)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in Path(d).rglob("*"))


def _recall_ndcg(top, truth, ks):
    sums = metrics.metric_sums(metrics.hits_from_topk(top, truth), (truth > 0).sum(1).astype(np.float32), ks)
    return metrics.finalize(jax.device_get(sums), truth.shape[0], "all")


@pytest.mark.parametrize("name", ["diffrec", "ease", pytest.param("multvae", marks=pytest.mark.slow),
                                  pytest.param("lightgcn", marks=pytest.mark.slow)])
@pytest.mark.slow
def test_recommend_reproduces_validation_metrics(runs, name):
    before = _snapshot(runs[name])
    rec = inference.load(runs[name])
    res = json.load(open(os.path.join(runs[name], "results.json")))
    k = 20
    out = rec.recommend("all", k)
    assert out.items.shape == (rec.n_users, k) and out.scores.dtype == np.float32
    assert np.all(np.diff(out.scores, axis=1) <= 0)  # best first
    train_x = rec.data.train.binary().to_dense()
    assert not np.take_along_axis(train_x, out.items, 1).any()  # seen items excluded
    truth = rec.data.valid.binary().to_dense()
    got = _recall_ndcg(out.items, truth, (5, 10, 20))
    for m in ("recall@10", "recall@20", "ndcg@20"):
        assert got[m] == pytest.approx(res["valid"][m], abs=1e-6), (name, m)
    # any subset and order of users gives the same rows
    users = np.array([7, 3, 0])
    part = rec.recommend(users, k)
    np.testing.assert_array_equal(part.items, out.items[users])
    np.testing.assert_array_equal(part.users, users)
    assert _snapshot(runs[name]) == before  # nothing written to the run


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sasrec", pytest.param("diffurec", marks=pytest.mark.slow)])
def test_sequential_histories_reproduce_validation_hr(runs, name):
    rec = inference.load(runs[name])
    res = json.load(open(os.path.join(runs[name], "results.json")))
    d, sp = rec.data, rec.data.valid
    hist = [row[row != d.pad_id] for row in sp.seq]
    k_eval = jax.random.split(jax.random.key(int(rec.config.seed)), 3)[2]
    out = rec.recommend_histories(hist, 10, seed=jax.random.fold_in(k_eval, 0))  # the validation key
    hits = (out.items == sp.targets[:, None])
    assert hits.sum(1).max() <= 1
    assert hits.any(1).mean() == pytest.approx(res["valid_exact"]["hr@10"], abs=1e-6)
    ranks = np.argmax(hits, 1)
    ndcg = np.where(hits.any(1), 1.0 / np.log2(ranks + 2), 0.0).mean()
    assert ndcg == pytest.approx(res["valid_exact"]["ndcg@10"], abs=1e-5)
    # known users: the whole sequence (valid item and test item appended)
    u = rec.recommend([0, 1], 5)
    assert u.items.shape == (2, 5) and not np.isin(u.items, [d.pad_id]).any()


@pytest.mark.slow
def test_stochastic_sampler_same_call_same_lists(runs):
    rec = inference.load(runs["dreamrec"])
    h = [[1, 2, 3], [4], [5, 6]]
    a = rec.recommend_histories(h, 5, seed=3)
    b = rec.recommend_histories(h, 5, seed=3)
    np.testing.assert_array_equal(a.items, b.items)
    alone = rec.recommend_histories([h[1]], 5, seed=3, row_ids=[1])
    np.testing.assert_array_equal(alone.items[0], a.items[1])  # independent of the batch make-up
    w0 = rec.recommend_histories(h, 5, seed=3, sampling={"w": 0.0})
    assert not np.array_equal(w0.scores, a.scores)
    with pytest.raises(inference.InferenceError, match="sessions, not users"):
        rec.recommend([0], 5)


@pytest.mark.slow
def test_sampler_choice_at_call_time(runs):
    d = inference.load(runs["diffrec"])
    base = d.recommend([1, 2], 5)
    s2 = d.recommend([1, 2], 5, sampling={"noise_steps": 2, "noise": True}, seed=0)
    s2b = d.recommend([1, 2], 5, sampling={"noise_steps": 2, "noise": True}, seed=0)
    np.testing.assert_array_equal(s2.scores, s2b.scores)
    assert not np.allclose(s2.scores, base.scores)
    s3 = d.recommend([1, 2], 5, sampling={"noise_steps": 2, "noise": True}, seed=1)
    assert not np.array_equal(s3.scores, s2.scores)
    with pytest.raises(inference.InferenceError, match="sampling.nope"):
        d.recommend([1], 5, sampling={"nope": 1})


def test_raw_ids_from_a_table(tmp_path):
    rng = np.random.default_rng(0)
    users = np.repeat([f"u{i:03d}" for i in range(60)], 12)
    items = np.array([f"item-{j}" for j in rng.integers(0, 40, users.size)])
    pairs = sorted(set(zip(users.tolist(), items.tolist())))
    csv = tmp_path / "t.csv"
    csv.write_text("user,item,ts\n" + "".join(f"{u},{i},{n}\n" for n, (u, i) in enumerate(pairs)))
    data, maps = load_table(csv, user_col="user", item_col="item", time_col="ts", return_maps=True,
                            cold_items="drop")
    folder = tmp_path / "npy"
    write_diffrec_npy(data, folder, maps=maps)
    c = _interaction_config("ease")
    c.data.source = "diffrec_npy"
    c.data.dir = str(folder)
    wd = str(tmp_path / "run")
    training.train_and_evaluate(c, wd)
    rec = inference.load(wd)
    out = rec.recommend(["u005", "u010"], 5)
    assert out.users.tolist() == ["u005", "u010"]
    assert all(str(i).startswith("item-") for i in out.items.ravel())
    h = rec.recommend_histories([["item-1", "item-2"]], 5)
    assert not np.isin(h.items, ["item-1", "item-2"]).any()
    with pytest.raises(inference.InferenceError, match="unknown raw item id"):
        rec.recommend_histories([["item-999"]], 5)
    with pytest.raises(inference.InferenceError, match="unknown raw user id"):
        rec.recommend(["nobody"], 5)


def test_bad_input_is_refused_naming_the_run(runs, tmp_path):
    rec = inference.load(runs["diffrec"])
    run = runs["diffrec"]
    cases = [
        (lambda: rec.recommend([10_000], 5), "unknown user"),
        (lambda: rec.recommend_histories([[0, 10_000]], 5), "unknown item"),
        (lambda: rec.recommend_histories([[]], 5), "history 0 is empty"),
        (lambda: rec.recommend_histories([list(range(inference.MAX_HISTORY + 1))], 5), "limit"),
        (lambda: rec.recommend([1], rec.n_items + 1), "larger than"),
        (lambda: rec.recommend([1], 0), "positive integer"),
    ]
    for fn, msg in cases:
        with pytest.raises(inference.InferenceError, match=msg) as e:
            fn()
        assert run in str(e.value)
    # a run without a checkpoint, a checkpoint that does not match, no run at all
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    shutil.rmtree(bare / "best")
    with pytest.raises(inference.InferenceError, match="no checkpoint"):
        inference.load(str(bare))
    assert not (bare / "best").exists()  # nothing was created
    other = tmp_path / "other"
    shutil.copytree(run, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model"]["dims"] = [8, 16]
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(inference.InferenceError, match="does not match"):
        inference.load(str(other))
    fit = tmp_path / "fit"
    shutil.copytree(runs["ease"], fit)
    cfg = json.loads((fit / "config.json").read_text())
    cfg["data"]["synthetic"]["n_items"] += 10
    (fit / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(inference.InferenceError, match="checkpoint does not match its config"):
        inference.load(str(fit))
    with pytest.raises(inference.InferenceError, match="no such run"):
        inference.load(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(inference.InferenceError, match="no config.json"):
        inference.load(str(tmp_path / "empty"))


@pytest.mark.slow
def test_bad_sequential_histories_are_refused(runs):
    seq = inference.load(runs["sasrec"])
    with pytest.raises(inference.InferenceError, match="empty") as e:
        seq.recommend_histories([[]], 5)
    assert runs["sasrec"] in str(e.value)
    with pytest.raises(inference.InferenceError, match="unknown item"):
        seq.recommend_histories([[0]], 5)  # 0 is the padding id, not an item


@pytest.mark.slow
def test_per_user_embedding_models_refuse_new_histories(runs):
    with pytest.raises(inference.InferenceError, match="one embedding per training user"):
        inference.load(runs["lightgcn"]).recommend_histories([[1]], 5)


def test_recommend_command(runs, tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    from diffrec_jax import export as cmd

    rec = inference.load(runs["diffrec"], batch_size=32)
    out = tmp_path / "recs.parquet"
    res = cmd.export(rec, "all", 7, str(out), exclude_seen=True, batch_size=32, progress=False)
    t = pq.read_table(out).to_pydict()
    assert res["users"] == rec.n_users and len(t["item"]) == rec.n_users * 7
    full = rec.recommend("all", 7)
    np.testing.assert_array_equal(np.asarray(t["item"]).reshape(-1, 7), full.items)
    assert t["rank"][:7] == list(range(1, 8))
    users = tmp_path / "users.txt"
    users.write_text("user\n3\n999999\n")
    p = subprocess.run([sys.executable, str(ROOT / "experiments" / "recommend.py"), f"--run={runs['diffrec']}",
                        f"--users={users}", "--k=5", f"--out={tmp_path / 'r.csv'}"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines()[-1].startswith("error: ") and "unknown user 999999" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "r.csv").exists()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port, body: bytes):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/recommend", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _start_server(run, port):
    proc = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "serve.py"), f"--run={run}",
                             f"--port={port}", "--max_batch=4", "--max_k=20", "--max_body_bytes=2000"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while time.time() - t0 < 120:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("server did not become healthy in 120 s")


@pytest.mark.slow
def test_server_answers_errors_and_restart(runs):
    pytest.importorskip("uvicorn")
    run = runs["diffrec"]
    rec = inference.load(run)
    want_h = rec.recommend_histories([[1, 5, 7]], 10, seed=0, row_ids=[0])
    want_u = rec.recommend([3], 10)
    answers = []
    for _ in range(2):  # start, check, stop, start again: the same answers
        port = _free_port()
        proc = _start_server(run, port)
        try:
            st, a = _post(port, json.dumps({"history": [1, 5, 7], "k": 10}).encode())
            assert st == 200 and a["items"] == want_h.items[0].tolist()
            np.testing.assert_allclose(a["scores"], want_h.scores[0], rtol=1e-6)
            st, b = _post(port, json.dumps({"user": 3, "k": 10}).encode())
            assert st == 200 and b["items"] == want_u.items[0].tolist()
            answers.append((a, b))
            for body, code, msg in [
                ({"user": 10_000, "k": 5}, 404, "unknown user"),
                ({"history": [10_000], "k": 5}, 400, "unknown item"),
                ({"history": [], "k": 5}, 400, "empty"),
                ({"history": [1], "k": 500}, 400, "k must be"),
                ({"history": [1], "user": 2}, 400, "exactly one"),
            ]:
                st, e = _post(port, json.dumps(body).encode())
                assert st == code and msg in e["error"] and run in e["error"]
            st, e = _post(port, b"{not json")
            assert st == 400 and "JSON" in e["error"]
            st, e = _post(port, json.dumps({"history": list(range(1000)), "k": 5}).encode())
            assert st == 413 and "larger than 2000 bytes" in e["error"]
            st, _ = _post(port, json.dumps({"history": [2, 3], "k": 3}).encode())
            assert st == 200  # still serving after the errors
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert answers[0] == answers[1]


@pytest.mark.slow
def test_diffkg_run_reproduces_validation_metrics(tmp_path):
    rng = np.random.default_rng(0)
    n_items, n_ent = 20, 35
    tr = np.stack([rng.integers(0, n_items, 60), rng.integers(0, 3, 60), rng.integers(n_items, n_ent, 60)], 1)
    np.savetxt(tmp_path / "kg.txt", tr, fmt="%d")
    c = test_config.get_config()
    c.data.synthetic.update(n_users=30, n_items=n_items, n_factors=4, mean_items_per_user=6, seed=0)
    c.model.name = "diffkg"
    c.model.update(kg_path=str(tmp_path / "kg.txt"), emb_dim=8, dims=(16,), diff_batch=16, samples_per_user=3,
                   triplet_num=2, keep_rate=1.0)
    c.diffusion.update(steps=5, noise_scale=0.1, noise_min=1e-4, noise_max=0.02)
    c.train.update(batch_size=16, num_epochs=2)
    c.eval.update(topk=(5, 10), select_metric="recall@10")
    wd = str(tmp_path / "run")
    res = training.train_and_evaluate(c, wd)
    rec = inference.load(wd)
    out = rec.recommend("all", 10)
    got = _recall_ndcg(out.items, rec.data.valid.binary().to_dense(), (5, 10))
    assert got["recall@10"] == pytest.approx(res["valid"]["recall@10"], abs=1e-6)
    with pytest.raises(inference.InferenceError, match="one embedding per training user"):
        rec.recommend_histories([[1]], 5)


@pytest.mark.slow
def test_dcdr_run_reproduces_its_lists(tmp_path):
    from diffrec_jax.data import rerank_synthetic
    from configs import dcdr_synthetic

    c = dcdr_synthetic.get_config("tiny")
    c.eval.ideal_requests = 0
    wd = str(tmp_path / "run")
    res = rerank.train_and_evaluate(c, wd)
    rec = inference.load(wd)
    te = rec.world.test
    out = rec.rerank(te.user, te.cands, initial=te.init)
    # the lists as positions into the candidates, scored with the world's true click model
    lists = np.array([[row.tolist().index(i) for i in o] for row, o in zip(te.cands, out.items)])
    u = rerank_synthetic.expected_clicks(rec.world, te.user, te.cands, lists)
    assert u.mean() == pytest.approx(res["expected_clicks"]["dcdr"], abs=1e-9)
    assert out.scores.shape == (40, 5) and ((out.scores >= 0) & (out.scores <= 1)).all()
    with pytest.raises(inference.InferenceError, match="twice"):
        rec.rerank([0], [[1, 1, 2, 3, 4]])
    with pytest.raises(inference.InferenceError, match="unknown item"):
        rec.rerank([0], [[1, 2, 3, 4, 10_000]])
    with pytest.raises(inference.InferenceError, match="condition"):
        rec.rerank([0], [[1, 2, 3, 4, 5]], condition="observed")


@pytest.mark.slow
def test_each_replica_of_a_several_seed_run(tmp_path):
    c = _interaction_config("diffrec")
    c.num_seeds = 2
    res = training.train_and_evaluate(c, str(tmp_path / "k2"))
    for i, s in enumerate(res["seeds"]):
        rec = inference.load(str(tmp_path / "k2"), seed=s)
        got = _recall_ndcg(rec.recommend("all", 20).items, rec.data.valid.binary().to_dense(), (20,))
        assert got["recall@20"] == pytest.approx(res["per_seed"][i]["valid"]["recall@20"], abs=1e-6)
    with pytest.raises(inference.InferenceError, match="seed 99 was not trained here"):
        inference.load(str(tmp_path / "k2"), seed=99)


@pytest.mark.parametrize("time_weights", [None, (0.1, 1.0)])
def test_a_users_row_as_a_history_gives_their_lists(runs, time_weights):
    import dataclasses

    from diffrec_jax.data.temporal import time_weighted

    rec = inference.load(runs["diffrec"])
    if time_weights:  # as a T-DiffRec run: training rows weighted by position
        with rec.config.unlocked():
            rec.config.data.time_weights = time_weights
        rec.data = dataclasses.replace(rec.data, train=time_weighted(rec.data.train, *time_weights))
    users = [3, 8]
    a = rec.recommend(users, 10)
    b = rec.recommend_histories([rec.data.train.row(u) for u in users], 10, seed=None, row_ids=users)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
