"""DiffKG on the KGCN Last.FM data (``../shared/data/lastfm_kgcn``): implicit feedback + item KG.

Split: seeded per-user random 70/10/20 (``diffrec_jax.data.kg.load_lastfm_kgcn``; the file has no
timestamps). Not the paper's Last-FM (KGAT's, 23k users / 48k items): the paper's 0.0980 / 0.0911
Recall@20 / NDCG@20 are on a different split of different data and are not comparable.

    python experiments/main.py --config=configs/diffkg_lastfm.py --workdir=runs/diffkg_lastfm

The trainer's ``load_data`` must know ``config.data.source = "lastfm_kgcn"`` (see the DiffKG notes
in the README / report); the model reads the KG from ``config.data.dir`` itself.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.data.source = "lastfm_kgcn"
    c.data.dir = "../shared/data/lastfm_kgcn"
    c.data.split = (0.7, 0.1, 0.2)  # per-user random split fractions
    c.data.split_seed = 0  # seed of the split (fixed across model seeds)

    c.model.name = "diffkg"
    # recommender (reference defaults with its Last-FM overrides where they apply)
    c.model.emb_dim = 64
    c.model.gnn_layers = 2
    c.model.kg_layers = 2  # Last-FM: layer_num_kg 2
    c.model.mess_dropout = 0.2  # Last-FM
    c.model.res_lambda = 0.0  # Last-FM
    c.model.triplet_num = -1  # Last-FM: all KG edges in the original view
    c.model.cl_pattern = 1  # Last-FM: main view = original KG, auxiliary = denoised KG
    c.model.ssl_reg = 0.1
    c.model.temp = 0.1
    c.model.reg = 1e-5  # Last-FM
    c.model.samples_per_user = 8  # ~ nnz(train) / users: one BPR triple per train pair per epoch
    c.model.gcn = "lightgcn"  # our LightGCN propagation (mean of layers); "reference": (A+I), sum
    c.model.lr = 5e-3  # tuned on validation over {1e-3, 5e-3}, as LightGCN's
    # KG diffusion (the denoiser is narrowed to 200 and runs every 5th epoch to fit the CPU budget;
    # the reference uses dims (1000,) every epoch: --config.model.dims='(1000,)' --config.model.kg_every=1)
    c.model.kg_every = 5
    c.model.dims = (200,)
    c.model.emb_size = 10
    c.model.norm = True
    c.model.dropout = 0.5
    c.model.e_loss = 0.01  # Last-FM
    c.model.rebuild_k = 1
    c.model.keep_rate = 0.1  # Last-FM
    c.model.diff_batch = 1024
    c.model.diff_lr = 1e-3
    c.diffusion.steps = 5
    c.diffusion.noise_scale = 0.1
    c.diffusion.noise_min = 1e-4
    c.diffusion.noise_max = 0.02

    c.train.batch_size = 128  # users per recommender step (x 8 triples = 1024, the reference's batch)
    c.train.num_epochs = 100  # the reference's 25 epochs are too few on this small data (15 steps/epoch)
    c.train.patience_epochs = 20
    c.eval.topk = (10, 20)
    c.eval.select_metric = "recall@20"
    c.eval.average = "nonempty"
    c.train.num_devices = 1
    return c
