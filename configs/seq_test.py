"""A tiny sequential configuration for tests and smoke runs (synthetic Markov sequences, seconds).

    python experiments/main.py --config=configs/seq_test.py --workdir=/tmp/seq_test
    python experiments/main.py --config=configs/seq_test.py:dreamrec --workdir=/tmp/seq_test_dr

The argument after ``:`` picks the model: ``sasrec`` (default), ``dreamrec`` or ``diffurec``.
"""

import ml_collections

from configs import default


def get_config(model: str = "sasrec"):
    c = default.get_config()
    c.task = "sequential"
    c.seed = 1
    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic_seq"  # synthetic_seq | dreamrec_npz | diffurec_npz
    c.data.dir = ""
    c.data.max_len = 8  # L
    c.data.on_long = "truncate"  # truncate | error
    c.data.synthetic_seq = ml_collections.ConfigDict()
    c.data.synthetic_seq.n_users = 200
    c.data.synthetic_seq.n_items = 40
    c.data.synthetic_seq.mean_len = 10.0
    c.data.synthetic_seq.layout = "sessions" if model == "dreamrec" else "loo"
    c.data.synthetic_seq.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = model
    c.model.hidden = 16
    c.model.num_blocks = 1
    c.model.num_heads = 1
    c.model.dropout = 0.1
    c.model.loss = "ce"  # sasrec: ce | bce
    c.model.emb_dropout = 0.1
    c.model.cfg_dropout = 0.1  # dreamrec: condition dropout p
    c.model.denoiser = "mlp1"  # dreamrec: mlp1 | mlp2
    c.model.deterministic_eval = True  # dreamrec: dropout off while sampling
    c.model.lambda_mean = 0.001  # diffurec
    c.model.lambda_std = 0.001
    c.model.mask_mode = "query"  # diffurec: query (reference) | key
    c.model.pos_emb = model != "diffurec"

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.schedule = "exp" if model == "dreamrec" else "trunc_lin"
    c.diffusion.steps = 8

    c.sampling = ml_collections.ConfigDict()
    c.sampling.w = 2.0  # dreamrec guidance strength
    c.sampling.mode = "reverse"  # diffurec: reverse | one_step

    c.optim.name = "adam"
    c.optim.lr = 3e-3
    c.optim.weight_decay = 0.0

    c.train.batch_size = 64
    c.train.num_epochs = 4
    c.train.eval_every_epochs = 2
    c.train.patience_epochs = 21
    c.train.sampling = "permutation"  # permutation | independent
    c.train.scan_steps = 16
    c.train.length_buckets = ()  # e.g. (8, 16, 32): batches of similar history length, cut to that width (length-invariant models)

    c.eval = ml_collections.ConfigDict()
    c.eval.topk = (5, 10, 20)
    c.eval.select_metric = "ndcg@10"
    c.eval.select_rule = "metric"
    c.eval.select_digits = 4
    c.eval.batch_size = 128
    c.eval.protocol = "exact"
    c.eval.score_padding = True
    c.eval.drop_remainder_of = 0
    c.eval.batch_mean_of = 0
    c.eval.test_at_end = False
    return c
