"""A tiny configuration for tests and smoke runs: seconds on one CPU core."""

from configs import default


def get_config():
    c = default.get_config()
    c.data.synthetic.n_users = 120
    c.data.synthetic.n_items = 60
    c.data.synthetic.mean_items_per_user = 12
    c.model.dims = (16, 32)
    c.diffusion.steps = 5
    c.train.batch_size = 32
    c.train.num_epochs = 6
    c.train.eval_every_epochs = 2
    c.eval.topk = (5, 10, 20)
    c.eval.select_metric = "recall@10"
    c.eval.batch_size = 50
    c.train.num_devices = 1  # the test suite forces 4 CPU devices; sharding has its own tests
    return c
