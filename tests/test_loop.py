"""The one training loop: its rules hold for every task.

* Exact resume on each task (interactions, sequential, knowledge graph, rerank): a run
  interrupted after a checkpoint and run again with the same workdir ends with the results of an
  uninterrupted run, float for float.
* One early-stopping rule (before epoch ``e``: evaluated and ``e - best_epoch >= patience``),
  one selection rule, the time budget, the non-finite check.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import dcdr_synthetic, seq_test  # noqa: E402
from configs import test as test_cfg  # noqa: E402
from diffrec_jax import training  # noqa: E402
from diffrec_jax.training import loop, rerank  # noqa: E402

# Orbax's asyncio helpers print "Event loop is closed" after an interrupted save; harmless.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class Interrupted(Exception):
    pass


def _comparable(results):
    """``results`` without wall-clock entries (any key containing 'time' or ending in '_s')."""
    if isinstance(results, dict):
        return {k: _comparable(v) for k, v in results.items()
                if "time" not in k and not k.endswith("_s")}
    return results


def _diffkg_cfg(tmp_path):
    c = test_cfg.get_config()
    rng = np.random.default_rng(0)
    n_items, n_ent = c.data.synthetic.n_items, c.data.synthetic.n_items + 40
    kg = np.stack([rng.integers(0, n_items, 300), rng.integers(0, 3, 300), rng.integers(n_items, n_ent, 300)], 1)
    np.savetxt(tmp_path / "kg.txt", kg, fmt="%d")
    c.model.name = "diffkg"
    c.model.kg_path = str(tmp_path / "kg.txt")
    c.model.emb_dim, c.model.dims = 8, (16,)
    c.model.diff_batch, c.model.samples_per_user, c.model.triplet_num, c.model.keep_rate = 16, 3, 2, 0.5
    c.diffusion.steps, c.diffusion.noise_scale, c.diffusion.noise_min, c.diffusion.noise_max = 5, 0.1, 1e-4, 0.02
    c.train.batch_size, c.train.num_epochs, c.train.eval_every_epochs = 32, 3, 1
    return c


def _rerank_cfg(tmp_path):
    c = dcdr_synthetic.get_config("tiny")
    c.train.num_epochs = 3  # the DCDR stage: checkpoints after epochs 1, 2, 3
    return c


CASES = {
    "interactions": (lambda p: test_cfg.get_config(), 4),
    "sequential": (lambda p: seq_test.get_config("sasrec"), 3),
    "knowledge_graph": (_diffkg_cfg, 2),
    "rerank": (_rerank_cfg, 3),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_after_an_interruption_equals_an_uninterrupted_run(case, tmp_path, monkeypatch):
    make_cfg, stop_at = CASES[case]
    full = training.train_and_evaluate(make_cfg(tmp_path), str(tmp_path / "full"))

    # interrupt the first epoch `stop_at` (for rerank: of its last model, DCDR), after the
    # checkpoint of the epoch before it
    if case == "rerank":
        real = rerank.StageTask.train_epoch

        def train_epoch(self, state, epoch, on_steps):
            if epoch == stop_at and self.seeds[0] % 1000 == 13 and not hits:
                hits.append(epoch)
                raise Interrupted
            return real(self, state, epoch, on_steps)

        monkeypatch.setattr(rerank.StageTask, "train_epoch", train_epoch)
    else:
        real_build = training.build_task

        def build_task(config, data):
            task = real_build(config, data)
            real_epoch = task.train_epoch

            def train_epoch(state, epoch, on_steps):
                if epoch == stop_at and not hits:
                    hits.append(epoch)
                    raise Interrupted
                return real_epoch(state, epoch, on_steps)

            task.train_epoch = train_epoch
            return task

        monkeypatch.setattr(training, "build_task", build_task)
    hits: list = []
    wd = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        training.train_and_evaluate(make_cfg(tmp_path), str(wd))
    assert hits == [stop_at]
    resumed = training.train_and_evaluate(make_cfg(tmp_path), str(wd))
    assert _comparable(resumed) == _comparable(full)
    # metrics.jsonl holds each epoch once, as the uninterrupted run's
    for sub in ([""] if case != "rerank" else ["evaluator", "pointwise", "dcdr"]):
        def epochs(d):
            recs = [json.loads(ln) for ln in (d / sub / "metrics.jsonl").read_text().splitlines()]
            return [r["epoch"] for r in recs if "train/loss" in r]
        assert epochs(wd) == epochs(tmp_path / "full")


# ----------------------------------------------------------------------------------------------
# The rules
# ----------------------------------------------------------------------------------------------


def test_one_early_stopping_rule():
    rep = {"best_epoch": 0, "best_score": -math.inf, "best": None}
    assert not loop.stopped(rep, 50, 3)  # never before the first evaluation
    rep.update(best_epoch=4, best={"valid": {}})
    assert not loop.stopped(rep, 6, 3) and loop.stopped(rep, 7, 3)


def test_selection_rounds_maximises_and_minimises_losses():
    sel = loop.Selection(ml_collections.ConfigDict({"select_metric": "recall@20", "select_digits": 2}))
    rep = {"best_score": -math.inf}
    assert sel.update(rep, {"recall@20": 0.101}) and not sel.update(rep, {"recall@20": 0.104})
    assert sel.update(rep, {"recall@20": 0.106})  # 0.11 > 0.10 after rounding
    low = loop.Selection(ml_collections.ConfigDict({"select_metric": "loss", "select_digits": None}))
    rep = {"best_score": -math.inf}
    assert low.update(rep, {"loss": 2.0}) and low.update(rep, {"loss": 1.5}) and not low.update(rep, {"loss": 1.7})
    anyrule = loop.Selection(ml_collections.ConfigDict({"select_metric": "hr@10", "select_rule": "any"}))
    rep = {"best_score": -math.inf}
    assert anyrule.update(rep, {"hr@10": 0.2, "ndcg@10": 0.1})
    assert anyrule.update(rep, {"hr@10": 0.1, "ndcg@10": 0.2})  # another metric improved
    assert not anyrule.update(rep, {"hr@10": 0.15, "ndcg@10": 0.15})


@pytest.mark.slow
def test_the_same_patience_stops_every_task_at_the_same_distance(tmp_path):
    """Interactions and sequences share the rule: with evaluation every epoch and patience p, the
    last epoch run is best_epoch + p - 1."""
    for name, c in (("interactions", test_cfg.get_config()), ("sequential", seq_test.get_config("sasrec"))):
        c.train.num_epochs, c.train.eval_every_epochs, c.train.patience_epochs = 12, 1, 2
        res = training.train_and_evaluate(c, str(tmp_path / name))
        assert res["epochs_run"] == min(12, res["best_epoch"] + 1), (name, res["best_epoch"], res["epochs_run"])


def test_a_model_of_another_task_is_refused_naming_the_fields(tmp_path):
    c = test_cfg.get_config()
    c.model.name = "sasrec"
    with pytest.raises(ValueError, match="config.task is 'interactions' but config.model.name 'sasrec' is a sequential"):
        training.train_and_evaluate(c, str(tmp_path))
