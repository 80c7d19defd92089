"""diffrec_jax: diffusion models for recommendation in JAX/Flax.

The functional core (``schedules``, ``diffusion``, ``timesteps``, ``samplers``) depends only on
JAX and NumPy; it imports nothing from the models, data or configs, so other JAX code can use it
on its own::

    from diffrec_jax import schedules, samplers
    sched = schedules.make_schedule("cosine", 1000)
    x0 = samplers.ddim_sample(my_denoiser, sched, x_T, key, num_steps=50)
"""

from diffrec_jax import diffusion, samplers, schedules, timesteps
from diffrec_jax.schedules import Schedule, VESchedule, make_schedule, make_ve_schedule

__version__ = "0.1.0"

__all__ = [
    "diffusion",
    "samplers",
    "schedules",
    "timesteps",
    "Schedule",
    "VESchedule",
    "make_schedule",
    "make_ve_schedule",
]
