"""experiments/tune.py: search-space parsing, trial lists, validation-only selection."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import test as test_config  # noqa: E402
from experiments import tune  # noqa: E402


def test_parse_space_reads_literals_and_tuples():
    space = tune.parse_space(["optim.lr=1e-3|5e-4", "model.dims=(200,600)|(1000,)"])
    assert space == {"optim.lr": [1e-3, 5e-4], "model.dims": [(200, 600), (1000,)]}
    with pytest.raises(ValueError, match="path=value"):
        tune.parse_space(["optim.lr"])
    with pytest.raises(ValueError, match="literals"):
        tune.parse_space(["optim.lr=abc"])


def test_trials_grid_and_random():
    space = {"a": [1, 2], "b": [3, 4, 5]}
    grid = tune.make_trials(space, "grid", 0, 0)
    assert len(grid) == 6 and grid[0] == {"a": 1, "b": 3}
    rnd = tune.make_trials(space, "random", 4, 0)
    assert rnd[0] == {} and len(rnd) == 4 and len({json.dumps(t) for t in rnd}) == 4
    assert rnd == tune.make_trials(space, "random", 4, 0)  # seeded
    with pytest.raises(KeyError, match="no field"):
        tune.apply(test_config.get_config(), {"optim.not_a_field": 1})


def test_selection_uses_validation_not_test(tmp_path):
    trials = [{}, {"optim.lr": 0.1}]
    results = {
        0: {"valid": {"recall@20": 0.30}, "test": {"recall@20": 0.10}},
        1: {"valid": {"recall@20": 0.20}, "test": {"recall@20": 0.90}},
    }
    summ = tune.summarize(trials, results, "recall@20", str(tmp_path), "cmd")
    assert summ["selected"] == 0
    assert (tmp_path / "tune.csv").read_text().splitlines()[1].startswith("0,")
