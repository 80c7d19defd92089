"""DiffRec (Wang et al., SIGIR 2023) as a trainer-agnostic model: init, loss and score functions.

Faithful to the reference (``shared/specs/diffrec.md``). Quirk by quirk (spec section 12):

1. *Boolean flags parsed as ``bool(str)``*: fixed. Our configs hold real booleans; the best ML-1M
   configuration sets ``reweight=True``, which is what the reference effectively ran.
2. *``reweight=False`` crashes in the reference*: fixed; it means weight 1 for every step.
3. *Importance sampling always on, starving ``t=0``*: mimicked by default
   (``diffusion.timestep_sampling="importance"``); ``"uniform"`` switches it off.
4. *Hard-coded input dropout 0.5*: mimicked, exposed as ``model.dropout``.
5. *Inference always runs all ``T`` reverse steps*: mimicked (``sampling.noise_steps`` only sets how
   far the start point is noised).
7. *Validation and test are the same computation*: scores are computed once and shared.
8. *Recall denominator ``|G_u|``, averages over all users*: mimicked (``eval.average="all"``).
9. *torch RNG streams*: not portable; we report means over seeds.
10. *float64 bookkeeping*: schedules are derived in float64; the loss history is float32, which
   holds weights up to 1e5 with ample precision.

The loss history that importance sampling reads (a Python-loop-updated float64 buffer in the
reference, not checkpointed) is an array in our train state, updated inside the jitted step and
checkpointed, so resume is exact.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from diffrec_jax import diffusion as dif
from diffrec_jax import samplers, schedules, timesteps
from diffrec_jax.models.mlp import DiffRecDenoiser


def make_schedule_from_config(dcfg, *, beta_fixed_default: bool = True) -> schedules.Schedule:
    """Builds the VP schedule described by a ``config.diffusion`` group."""
    kind = dcfg.schedule
    if kind in ("diffrec", "linear-var"):
        return schedules.make_schedule(
            "diffrec",
            dcfg.steps,
            noise_scale=dcfg.noise_scale,
            noise_min=dcfg.noise_min,
            noise_max=dcfg.noise_max,
            beta_fixed=dcfg.get("beta_fixed", beta_fixed_default),
        )
    if kind == "linear":
        s = dcfg.noise_scale
        return schedules.make_schedule(
            "linear", dcfg.steps, beta_start=s * dcfg.noise_min, beta_end=s * dcfg.noise_max
        )
    return schedules.make_schedule(kind, dcfg.steps)


class DiffRec:
    """DiffRec: Gaussian diffusion over each user's interaction row with an MLP denoiser.

    The trainer-facing contract (shared by every interaction model of the library):

    * ``init(key) -> (graphdef, params, model_state)``; ``model_state`` holds non-trainable arrays
      (here the importance sampler's :class:`~diffrec_jax.timesteps.LossHistory`);
    * ``loss(params, model_state, x_BxI, mask_B, key) -> (loss, (model_state, aux))``;
    * ``score(params, model_state, x_BxI, key) -> scores_BxI``.
    """

    name = "diffrec"

    def __init__(self, config, data):
        self.n_items = int(data.n_items)
        self.mcfg = config.model
        self.dcfg = config.diffusion
        self.scfg = config.sampling
        self.noise_free = float(self.dcfg.noise_scale) == 0.0
        self.schedule = None if self.noise_free else make_schedule_from_config(self.dcfg)
        self.num_steps = int(self.dcfg.steps)
        self.mean_type = self.dcfg.mean_type
        self.graphdef = None

    @staticmethod
    def validate_config(config: Any) -> None:
        """Refuses DiffRec settings that make no sense, naming the field."""
        d = config.diffusion
        if int(d.steps) < 1:
            raise ValueError(f"config.diffusion.steps must be >= 1, got {d.steps}")
        if d.noise_scale < 0:
            raise ValueError(f"config.diffusion.noise_scale must be >= 0, got {d.noise_scale}")
        if d.noise_scale > 0 and d.schedule in ("diffrec", "linear-var", "linear"):
            if not d.noise_min < d.noise_max:
                raise ValueError(
                    f"config.diffusion.noise_min ({d.noise_min}) must be < "
                    f"config.diffusion.noise_max ({d.noise_max})"
                )
        known = ("diffrec", "linear-var", "linear", "cosine", "exp", "sqrt")
        if d.schedule not in known:
            raise ValueError(f"config.diffusion.schedule must be one of {known}, got {d.schedule!r}")
        if d.noise_scale > 0 and d.schedule in ("diffrec", "linear-var", "linear"):
            if d.noise_min <= 0:
                raise ValueError(f"config.diffusion.noise_min must be > 0, got {d.noise_min}")
            if d.noise_scale * d.noise_max >= 1:
                raise ValueError(
                    "config.diffusion.noise_scale * config.diffusion.noise_max must be < 1, got "
                    f"{d.noise_scale} * {d.noise_max}"
                )
        if int(d.history_size) < 1:
            raise ValueError(f"config.diffusion.history_size must be >= 1, got {d.history_size}")
        if not 0.0 <= d.uniform_prob <= 1.0:
            raise ValueError(f"config.diffusion.uniform_prob must be in [0, 1], got {d.uniform_prob}")
        if d.mean_type not in dif.MEAN_TYPES:
            raise ValueError(f"config.diffusion.mean_type must be one of {dif.MEAN_TYPES}, got {d.mean_type!r}")
        if d.timestep_sampling not in ("uniform", "importance"):
            raise ValueError(
                "config.diffusion.timestep_sampling must be 'uniform' or 'importance', "
                f"got {d.timestep_sampling!r}"
            )
        if not 0 <= config.sampling.noise_steps <= d.steps:
            raise ValueError(
                f"config.sampling.noise_steps must be in [0, config.diffusion.steps={d.steps}], "
                f"got {config.sampling.noise_steps}"
            )
        if not 0.0 <= config.model.dropout < 1.0:
            raise ValueError(f"config.model.dropout must be in [0, 1), got {config.model.dropout}")

    def make_denoiser(self, key: jax.Array) -> DiffRecDenoiser:
        """The configured :class:`DiffRecDenoiser` with parameters drawn from ``key``."""
        m = self.mcfg
        return DiffRecDenoiser(
            self.n_items,
            tuple(m.dims),
            emb_size=m.emb_size,
            dropout_rate=m.dropout,
            act=m.act,
            norm=m.norm,
            init=m.get("init", "diffrec"),
            rngs=nnx.Rngs(params=key),
        )

    def init(self, key: jax.Array):
        """``(graphdef, params, loss_history)``: the split denoiser and an empty importance history."""
        graphdef, params = nnx.split(self.make_denoiser(key))
        self.graphdef = graphdef
        hist = timesteps.init_loss_history(self.num_steps, self.dcfg.history_size)
        return graphdef, params, hist

    def _denoise_fn(self, params, dropout_key=None):
        model = nnx.merge(self.graphdef, params)

        def denoise_fn(x, t_B, cond=None):
            return model(x, t_B, dropout_key=dropout_key)

        return denoise_fn

    def loss(self, params, hist: timesteps.LossHistory, x_BxI, mask_B, key):
        """Importance-weighted DiffRec loss over the valid rows of a (padded) batch."""
        k_t, k_noise, k_drop = jax.random.split(key, 3)
        B = x_BxI.shape[0]
        t_B, pt_B = timesteps.sample_timesteps(
            k_t, hist, B, method=self.dcfg.timestep_sampling, uniform_prob=self.dcfg.uniform_prob
        )
        denoise_fn = self._denoise_fn(params, k_drop)
        if self.noise_free:
            out = denoise_fn(x_BxI, t_B)
            loss_B = jnp.mean(jnp.square(x_BxI - out), axis=-1)
        else:
            loss_fn = dif.get_loss_fn(
                self.schedule, mean_type=self.mean_type, reweight=self.dcfg.reweight
            )
            loss_B, _ = loss_fn(denoise_fn, x_BxI, t_B, k_noise)
        maskf = mask_B.astype(jnp.float32)
        loss = jnp.sum(loss_B / pt_B * maskf) / jnp.maximum(maskf.sum(), 1.0)
        new_hist = timesteps.update_loss_history(hist, t_B, loss_B, mask_B)
        return loss, (new_hist, {})

    def score(self, params, hist, x_BxI, key):
        """Reverse diffusion from the user's row (spec section 6); returns ``[B, I]`` scores.

        Uses :func:`projected_reverse` (the same numbers with about 5x fewer FLOPs on ML-1M)
        when ``sampling.fast`` is set and the chain is deterministic, else the generic sampler.
        """
        denoise_fn = self._denoise_fn(params)
        if self.noise_free:
            return samplers.iterate_denoiser(denoise_fn, x_BxI, self.num_steps)
        x = x_BxI
        if self.scfg.noise_steps > 0:  # noised start point, exactly as diffrec_reverse draws it
            keys_B = samplers.batch_keys(key, x.shape[0])
            z = samplers.normal_per_example(keys_B, self.num_steps, x.shape, x.dtype)
            t_B = jnp.full((x.shape[0],), self.scfg.noise_steps - 1, jnp.int32)
            x = dif.q_sample(self.schedule, x, t_B, z)
        if self.scfg.get("fast", True) and projected_reverse_applies(self):
            return projected_reverse(nnx.merge(self.graphdef, params), self.schedule, x)
        return samplers.diffrec_reverse(
            denoise_fn,
            self.schedule,
            x,
            key,
            noise_steps=0,
            sampling_noise=self.scfg.noise,
            mean_type=self.mean_type,
        )


def projected_reverse_applies(model: DiffRec) -> bool:
    """Whether :func:`projected_reverse` computes exactly DiffRec's deterministic chain."""
    return (
        not model.scfg.noise
        and model.mean_type == "x0"
        and not model.mcfg.norm
        and model.schedule is not None
    )


def projected_reverse(denoiser: DiffRecDenoiser, schedule: schedules.Schedule, x_BxI: jnp.ndarray):
    """DiffRec's deterministic reverse chain, computed in the first layer's projected space.

    Without sampling noise the chain is linear in the denoiser output:
    ``x_{t-1} = c1_t f(x_t, t) + c2_t x_t``, and ``x`` enters the next call only through the first
    layer, ``W_x^T x`` (``W_x``: the ``I x H`` rows of the first kernel that multiply ``x``). With
    ``f = W_o^T a + b_o`` (``a``: the last hidden activation) the projection obeys

        ``h_{t-1} = c1_t (a_t (W_o W_x) + b_o W_x) + c2_t h_t``,   ``h = x W_x``,

    so each step costs ``H_last x H`` instead of the two ``I``-wide layers. Only the last step
    (``t = 0``, where ``c1 = 1`` and ``c2 = 0``) goes through the full output layer. On ML-1M
    (I = 2810, dims 200/600) that is 0.61 M instead of 3.62 M multiply-adds per user per step
    (0.33 instead of 1.72 TFLOP for a full 40-step evaluation of 5,949 users).
    The result equals the generic sampler up to floating-point reassociation.

    Args:
      denoiser: the (merged) :class:`DiffRecDenoiser`.
      schedule: the diffusion schedule (``posterior_mean_coef2[0]`` must be 0, true for any
        schedule built by :func:`diffrec_jax.schedules.from_betas`).
      x_BxI: start points ``[B, I]``.

    Returns:
      ``[B, I]`` scores, as :func:`diffrec_jax.samplers.diffrec_reverse` with ``mean_type="x0"``.
    """
    from diffrec_jax.models.mlp import activation, timestep_embedding

    act = activation(denoiser.act_name)
    n_items = x_BxI.shape[-1]
    first = denoiser.in_layers[0]
    w_first = first.kernel[...]
    w_x, w_emb = w_first[:n_items], w_first[n_items:]
    last = denoiser.out_layers[-1]
    w_out, b_out = last.kernel[...], last.bias[...]
    m_proj = w_out @ w_x  # [H_last, H]
    c_proj = b_out @ w_x  # [H]

    def hidden(h_pre, t):
        """Last hidden activation given the first layer's x-projection ``h_pre``."""
        t_B = jnp.full((h_pre.shape[0],), t, jnp.int32)
        emb = denoiser.emb_layer(timestep_embedding(t_B, denoiser.emb_size))
        h = act(h_pre + emb @ w_emb + first.bias[...])
        for layer in list(denoiser.in_layers)[1:]:
            h = act(layer(h))
        for layer in list(denoiser.out_layers)[:-1]:
            h = act(layer(h))
        return h

    def step(hx, t):
        a = hidden(hx, t)
        hx = schedule.posterior_mean_coef1[t] * (a @ m_proj + c_proj) + (
            schedule.posterior_mean_coef2[t] * hx
        )
        return hx, None

    T = schedule.num_steps
    hx, _ = jax.lax.scan(step, x_BxI @ w_x, jnp.arange(T - 1, 0, -1, dtype=jnp.int32))
    # t = 0: c1 = 1, c2 = 0, so the output is the model's x0 prediction itself.
    return schedule.posterior_mean_coef1[0] * (hidden(hx, 0) @ w_out + b_out)
