"""Default configuration: every field of every group, each with a comment.

Experiment files (``configs/diffrec_ml1m.py`` ...) start from ``get_config()`` here and override.
This default trains DiffRec on a small synthetic dataset the library generates, in about a minute
on 2 CPU cores::

    python experiments/main.py --config=configs/default.py --workdir=/tmp/diffrec_synthetic

One name per quantity. Every model, config and module uses these names for these quantities:

==============================  =============================================================
``diffusion.steps``             the number of diffusion (noising) steps T of a model's forward
                                process, whatever the model (DiffRec, L-/T-DiffRec, DreamRec,
                                DiffuRec, DiffKG, DCDR, GiffCF's filter steps, FlowCF's time grid).
                                In code: ``num_steps`` (``schedule.num_steps``, ``model.num_steps``).
``sampling.steps``              the number of reverse (network) steps run at inference, for the
                                models that run fewer than T (FlowCF).
``sampling.noise_steps``        DiffRec / L-DiffRec: forward steps of noise on the user's row
                                before the reverse chain (the reference's ``sampling_steps``; all
                                T reverse steps run whatever it is; 0: the clean row).
``train.patience_epochs``       early stopping, one rule for every task: before epoch e, stop once
                                the run has been evaluated and e - best_epoch >= patience_epochs.
``train.num_epochs``            the most epochs; ``train.eval_every_epochs`` how often validation
                                runs (the last epoch and the one crossing ``time_budget_s`` too).
``eval.select_metric``          the validation metric the best epoch is chosen by (higher is better;
                                a name ending in ``loss``: lower), after rounding to
                                ``eval.select_digits``.
``fit``                         only a closed-form fit (EASE, ItemKNN, RP3beta, BSPM): no epochs.
``"gelu"`` / ``"gelu_tanh"``     the exact (erf) GELU / its tanh approximation, in every module.
==============================  =============================================================
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "interactions"  # the model's task in the registry (checked): interactions | sequential | rerank
    c.num_seeds = 1  # train this many seeds (seed, seed+1, ...) at once, vmapped; reports mean ± std
    c.seed = 1  # seeds init, data order (with the epoch) and every PRNG key (with the step)

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"  # synthetic | diffrec_npy | movielens
    c.data.dir = ""  # folder of the dataset files (diffrec_npy, movielens)
    c.data.path = ""  # movielens: explicit u.data / ratings.dat path (overrides dir)
    c.data.min_rating = ml_collections.config_dict.placeholder(float)  # movielens: keep ratings >= this
    c.data.split = (0.7, 0.2, 0.1)  # movielens: per-user temporal train/valid/test shares
    c.data.time_weights = ()  # T-DiffRec: (w_min, w_max) chronological weights of train rows; () off
    c.data.synthetic = ml_collections.ConfigDict()
    c.data.synthetic.n_users = 1000  # synthetic users
    c.data.synthetic.n_items = 500  # synthetic items
    c.data.synthetic.n_factors = 8  # latent dimension of the generating model
    c.data.synthetic.mean_items_per_user = 40  # average interactions per user
    c.data.synthetic.seed = 0  # the dataset's own seed (independent of c.seed)

    c.model = ml_collections.ConfigDict()
    c.model.name = "diffrec"  # registered model name (diffrec_jax.models.available())
    c.model.dims = (200, 600)  # DiffRec --dims: hidden widths of the out side, bottleneck first
    c.model.emb_size = 10  # timestep embedding width
    c.model.dropout = 0.5  # input dropout (hard-coded 0.5 in the reference)
    c.model.act = "tanh"  # activation
    c.model.norm = False  # L2-normalise input rows
    c.model.init = "diffrec"  # diffrec: Xavier-normal + N(0, 1e-3) biases; xavier: zero biases

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.schedule = "diffrec"  # diffrec (linear-var) | linear | cosine | exp | sqrt
    c.diffusion.steps = 40  # T
    c.diffusion.noise_scale = 0.005  # s; 0 disables noise (denoiser iterated T times)
    c.diffusion.noise_min = 0.005  # m (must be < noise_max)
    c.diffusion.noise_max = 0.01  # M
    c.diffusion.beta_fixed = True  # override beta_0 := 1e-5 (DiffRec, T-DiffRec)
    c.diffusion.mean_type = "x0"  # what the denoiser predicts: x0 | eps | v
    c.diffusion.reweight = True  # ELBO step weights (what every reference run used)
    c.diffusion.timestep_sampling = "importance"  # importance (reference) | uniform
    c.diffusion.history_size = 10  # losses kept per step for importance sampling
    c.diffusion.uniform_prob = 0.001  # uniform mixing weight of importance sampling

    c.sampling = ml_collections.ConfigDict()
    c.sampling.noise_steps = 0  # DiffRec: start from q(x_S | x_0), S = this (0: the clean row); all T steps run
    c.sampling.noise = False  # add noise in the reverse steps
    c.sampling.fast = True  # DiffRec: run the deterministic chain in the projected space (same result)

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # adamw | adam | sgd
    c.optim.lr = 1e-3  # learning rate
    c.optim.weight_decay = 0.0  # decoupled weight decay (torch AdamW semantics)
    c.optim.b1 = 0.9  # Adam beta1
    c.optim.b2 = 0.999  # Adam beta2
    c.optim.eps = 1e-8  # Adam epsilon
    c.optim.grad_clip = 0.0  # global-norm clipping (0: off, as the reference)

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 400  # users per step (last partial batch kept, padded and masked)
    c.train.num_epochs = 30  # maximum epochs
    c.train.eval_every_epochs = 5  # evaluate (and checkpoint) every this many epochs
    c.train.patience_epochs = 20  # before epoch e: stop once evaluated and e - best_epoch >= this
    c.train.max_to_keep = 2  # checkpoints kept
    c.train.time_budget_s = 0.0  # stop after this many seconds of training + evaluation (0: none)
    c.train.num_devices = 0  # data-parallel devices (0: all visible); batches are sharded over them

    c.eval = ml_collections.ConfigDict()
    c.eval.topk = (10, 20, 50, 100)  # cut-offs K
    c.eval.select_metric = "recall@20"  # validation metric for model selection
    c.eval.select_digits = 4  # selection compares values rounded to this many decimals
    c.eval.batch_size = 2048  # users per evaluation batch
    c.eval.average = "all"  # all (DiffRec: divide by every user) | nonempty
    return c
