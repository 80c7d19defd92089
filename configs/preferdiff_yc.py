"""PreferDiff on YooChoose, in DreamRec's harness (the split ``configs/dreamrec_yc.py`` reads).

    python experiments/main.py --config=configs/preferdiff_yc.py --workdir=runs/preferdiff_yc

DreamRec's data, encoder width and evaluation (its ``:corrected`` variant: dropout off while
sampling, the padding row not ranked, every row counted) with PreferDiff's objective and the
reference's diffusion settings (``lswhim/PreferDiff``: lambda 0.4 (``rank_weight`` 0.6), cosine
reconstruction, gamma 5, in-batch negatives, linear betas 1e-4..0.02 over T = 2000, DDIM sampling,
guidance w 2 as the reference README's command, Adam lr 1e-4). The paper has no YooChoose
result; width 64 is DreamRec's (the paper uses 3,072). Evaluation every 5 epochs and patience 26
epochs (5 evaluations) as DreamRec's ``:stopgrad`` run, for CPU time.
"""

import os

import ml_collections

from configs import default

_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "dreamrec", "yc")


def get_config():
    c = default.get_config()
    c.task = "sequential"  # next-item training and full-ranking evaluation
    c.seed = 100  # PRNG seed (DreamRec's --random_seed)
    c.data = ml_collections.ConfigDict()
    c.data.source = "dreamrec_npz"  # DreamRec's yc .npz with its given splits (right-padded)
    c.data.dir = os.path.normpath(_DATA)  # ../shared/data/dreamrec/yc
    c.data.max_len = 10  # history length (DreamRec's seq_size, PreferDiff's max_seq_length)
    c.data.on_long = "error"  # the split has no longer history

    c.model = ml_collections.ConfigDict()
    c.model.name = "preferdiff"  # diffrec_jax/models/preferdiff.py
    c.model.hidden = 64  # embedding width d (DreamRec's; the paper uses 3,072)
    c.model.num_blocks = 1  # causal self-attention blocks of the history encoder
    c.model.num_heads = 2  # attention heads (PreferDiff's num_heads)
    c.model.dropout = 0.1  # encoder dropout
    c.model.cfg_dropout = 0.1  # condition dropout p: the history is replaced by the null vector
    c.model.denoiser = "mlp1"  # Linear(3d -> d) on [x_t; c; tau(t)]
    c.model.item_init_std = 1.0  # item table init N(0, std^2)
    c.model.stop_target_grad = False  # True: no gradient into the x0 target rows (not in PreferDiff)
    c.model.deterministic_eval = True  # dropout off while sampling
    c.model.rank_weight = 0.6  # weight of the BPR-Diff term, 1 - lambda with lambda 0.4
    c.model.rank_scale = 5.0  # gamma inside -log sigmoid(-gamma (l+ - l-))
    c.model.recon_loss = "cosine"  # (cos - 1)^2 reconstruction error (mse: DreamRec's)
    c.model.negatives = "in_batch"  # negatives: the other targets of the batch
    c.model.num_negatives = 0  # 0: all other valid rows of the batch, averaged into one centroid
    c.model.rank_reduction = "example"  # paper's per-example log-sigmoid (batch: the released code)

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.schedule = "linear"  # beta schedule
    c.diffusion.steps = 2000  # T
    c.diffusion.beta_start = 1e-4  # first beta
    c.diffusion.beta_end = 0.02  # last beta

    c.sampling = ml_collections.ConfigDict()
    c.sampling.w = 2.0  # guidance strength w
    c.sampling.mode = "ddim"  # deterministic DDIM | ddpm (all T ancestral steps)
    c.sampling.steps = 20  # DDIM steps
    c.sampling.fast = True  # affine mlp1 split

    c.optim.name = "adam"  # Adam
    c.optim.lr = 1e-4  # learning rate
    c.optim.weight_decay = 0.0  # weight decay
    c.optim.grad_clip = 0.0  # no clipping

    c.train.batch_size = 256  # batch size
    c.train.num_epochs = 150  # maximum epochs
    c.train.eval_every_epochs = 5  # evaluate every 5 epochs (CPU time)
    c.train.patience_epochs = 26  # stop once 26 epochs passed without a better one
    c.train.sampling = "permutation"  # shuffled passes
    c.train.scan_steps = 278  # 1,668 steps per epoch = 6 calls
    c.train.max_to_keep = 2  # checkpoints kept
    c.train.time_budget_s = 0.0  # wall-clock budget in seconds (0: none)

    c.eval = ml_collections.ConfigDict()
    c.eval.topk = (10, 20, 50)  # DreamRec's cut-offs
    c.eval.select_metric = "hr@20"  # DreamRec's selection metric
    c.eval.select_rule = "metric"  # select on the metric alone
    c.eval.select_digits = 5  # compare rounded to this many decimals
    c.eval.batch_size = 1000  # rows per evaluation batch
    c.eval.protocol = "exact"  # mean over every row
    c.eval.score_padding = False  # the padding row is not ranked
    c.eval.drop_remainder_of = 100  # used by protocol="reference" only
    c.eval.batch_mean_of = 0  # no per-batch averaging
    c.eval.test_at_end = False  # test at every evaluation, as DreamRec's harness
    return c
