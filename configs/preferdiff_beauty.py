"""PreferDiff on Amazon Beauty, in DiffuRec's harness (the split ``configs/sasrec_beauty.py`` reads).

    python experiments/main.py --config=configs/preferdiff_beauty.py --workdir=runs/preferdiff_beauty

The reference's settings (``lswhim/PreferDiff``: README's best Beauty row and
``models/PDSRec/config.yaml``, ``default.yaml``) except where noted: lambda 0.4 (``rank_weight``
0.6), guidance w 8, cosine reconstruction, gamma 5, in-batch negatives, linear betas 1e-4..0.02
over T = 2000, condition dropout 0.1, one causal block with 2 heads, dropout 0.1, history length
10, batch 256, Adam lr 1e-4 without weight decay, evaluation every epoch, patience 10 evaluations.

Deviations, all for a 2-core CPU or for this harness: ``hidden`` 64 instead of the paper's 3,072
(SASRec's width in this harness; the search over widths on validation is not yet run, see issue
18); no 10,000-step warm-up (the library's optimizer has none) and no gradient clipping (the
reference clips at 1.0; ``optim.grad_clip`` here); model selection on validation NDCG@10 (the
reference uses Recall@5) and test once at the end on the selected parameters, as SASRec and
DiffuRec in this harness; DiffuRec's leave-one-out split instead of the paper's own Beauty files.
"""

import os

import ml_collections

from configs import default

_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "diffurec", "amazon_beauty")


def get_config():
    c = default.get_config()
    c.task = "sequential"  # next-item training and full-ranking evaluation
    c.seed = 1  # PRNG seed (init, batches, noise)
    c.data = ml_collections.ConfigDict()
    c.data.source = "diffurec_npz"  # DiffuRec's dataset.npz, leave-one-out, every train prefix
    c.data.dir = os.path.normpath(_DATA)  # ../shared/data/diffurec/amazon_beauty
    c.data.max_len = 10  # history length L (the reference's max_seq_length)
    c.data.on_long = "truncate"  # keep the last L items of longer histories

    c.model = ml_collections.ConfigDict()
    c.model.name = "preferdiff"  # diffrec_jax/models/preferdiff.py
    c.model.hidden = 64  # embedding width d (paper: 3,072; not yet searched here)
    c.model.num_blocks = 1  # causal self-attention blocks of the history encoder (layer_num)
    c.model.num_heads = 2  # attention heads (num_heads)
    c.model.dropout = 0.1  # encoder dropout (dropout)
    c.model.cfg_dropout = 0.1  # condition dropout p: the history is replaced by the null vector
    c.model.denoiser = "mlp1"  # Linear(3d -> d) on [x_t; c; tau(t)] (the reference's denoise_nn)
    c.model.item_init_std = 1.0  # item table init N(0, std^2) (the reference's ID table: N(0, 1))
    c.model.stop_target_grad = False  # True: no gradient into the x0 target rows (not in PreferDiff)
    c.model.deterministic_eval = True  # dropout off while sampling (the reference calls eval())
    c.model.rank_weight = 0.6  # weight of the BPR-Diff term, 1 - lambda with the paper's lambda 0.4
    c.model.rank_scale = 5.0  # gamma inside -log sigmoid(-gamma (l+ - l-)) (the reference's gamma)
    c.model.recon_loss = "cosine"  # (cos - 1)^2 reconstruction error (mse: DreamRec's)
    c.model.negatives = "in_batch"  # negatives: the other targets of the batch (sample_func=batch)
    c.model.num_negatives = 0  # 0: all other valid rows of the batch, averaged into one centroid
    c.model.rank_reduction = "example"  # paper's per-example log-sigmoid (batch: the released code)

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.schedule = "linear"  # beta_sche
    c.diffusion.steps = 2000  # T (timesteps)
    c.diffusion.beta_start = 1e-4  # first beta
    c.diffusion.beta_end = 0.02  # last beta

    c.sampling = ml_collections.ConfigDict()
    c.sampling.w = 8.0  # guidance strength w (the reference README's Beauty value)
    c.sampling.mode = "ddim"  # deterministic DDIM (the reference's default sampler) | ddpm
    c.sampling.steps = 20  # DDIM steps (the reference strides 2000 steps by 100)
    c.sampling.fast = True  # affine mlp1 split (same numbers up to rounding, fewer FLOPs)

    c.optim.name = "adam"  # Adam (weight decay 0)
    c.optim.lr = 1e-4  # learning rate (the reference's lr)
    c.optim.weight_decay = 0.0  # weight decay
    c.optim.grad_clip = 0.0  # no clipping (the reference clips the global norm at 1.0)

    c.train.batch_size = 256  # train_batch_size
    c.train.num_epochs = 150  # epochs
    c.train.eval_every_epochs = 1  # eval_interval
    c.train.patience_epochs = 11  # stop once 11 epochs passed without a better one (patience 10)
    c.train.sampling = "permutation"  # shuffled passes over every training example
    c.train.scan_steps = 103  # 514 steps per epoch = 5 calls
    c.train.max_to_keep = 2  # checkpoints kept
    c.train.time_budget_s = 0.0  # wall-clock budget in seconds (0: none)

    c.eval = ml_collections.ConfigDict()
    c.eval.topk = (5, 10, 20)  # cut-offs K of HR@K and NDCG@K
    c.eval.select_metric = "ndcg@10"  # validation metric for model selection
    c.eval.select_rule = "metric"  # select on the metric alone
    c.eval.select_digits = 6  # compare rounded to this many decimals
    c.eval.batch_size = 1024  # users per evaluation batch
    c.eval.protocol = "exact"  # mean over every user
    c.eval.score_padding = False  # the padding row is not ranked
    c.eval.drop_remainder_of = 0  # keep every row
    c.eval.batch_mean_of = 0  # no per-batch averaging
    c.eval.test_at_end = True  # test once, on the parameters selected on validation
    return c
