"""DCDR: discrete conditional diffusion for reranking (Lin et al., WWW 2024 Companion), rebuilt.

**A reconstruction by design, not a port.** The paper's code and data are not public and its
full text was not available; ``shared/specs/dcdr.md`` tags every element as [paper] (abstract /
consistent summaries), [summary] or [design] (our choice, standard discrete-diffusion machinery).
This package implements that spec (its section 8), one file per part:

* :mod:`.kernels`: the discrete forward kernels over lists (schedules, ``q(x_t | x_0)`` samplers,
  closed-form marginals and posteriors, the per-position reverse transition);
* :mod:`.beam`: valid-list decoding, beam search and the reverse process (:func:`generate`);
* :mod:`.networks`: the shared network pieces (dense layers, a pre-LN Transformer, the request
  :class:`Context` and its embeddings, config / world helpers, BCE);
* :mod:`.denoiser`: :class:`DCDR`, the conditional denoiser with pointer outputs and its loss;
* :mod:`.evaluator`: :class:`ListEvaluator` and :func:`evaluator_guide` (conditioning);
* :mod:`.pointwise`: the :class:`PointwiseRanker` baseline.

Each file's docstring holds its part of the spec. Everything here is functional JAX on dict
parameter trees; the training loop is :mod:`diffrec_jax.training.rerank`.
"""

from diffrec_jax.models.dcdr.beam import (INVALID, decode_topb, generate, greedy_decode,
                                          greedy_decode_jax)
from diffrec_jax.models.dcdr.denoiser import DCDR, N_CODES, NULL_CODE
from diffrec_jax.models.dcdr.evaluator import ListEvaluator, evaluator_guide
from diffrec_jax.models.dcdr.kernels import (KERNELS, DiscreteSchedule, make_discrete_schedule,
                                             perm_log_marginal, perm_posterior_prob,
                                             perm_posterior_weights, perm_q_sample, q_sample,
                                             swap_q_sample, token_marginal, token_posterior,
                                             token_q_sample, transition_logprobs)
from diffrec_jax.models.dcdr.networks import Context, init_rank, init_transformer, transformer
from diffrec_jax.models.dcdr.pointwise import PointwiseRanker

__all__ = [
    "Context",
    "DCDR",
    "DiscreteSchedule",
    "INVALID",
    "KERNELS",
    "ListEvaluator",
    "NULL_CODE",
    "N_CODES",
    "PointwiseRanker",
    "decode_topb",
    "evaluator_guide",
    "generate",
    "greedy_decode",
    "greedy_decode_jax",
    "init_rank",
    "init_transformer",
    "make_discrete_schedule",
    "perm_log_marginal",
    "perm_posterior_prob",
    "perm_posterior_weights",
    "perm_q_sample",
    "q_sample",
    "swap_q_sample",
    "token_marginal",
    "token_posterior",
    "token_q_sample",
    "transformer",
    "transition_logprobs",
]
