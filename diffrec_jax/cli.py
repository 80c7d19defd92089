"""What launchers share: config overrides and the one-line errors a command-line user sees."""

from __future__ import annotations

import os

from diffrec_jax.checkpointing import CheckpointError
from diffrec_jax.data import DataError

# Errors that describe the user's input (data files, config fields, a run directory), each naming
# the file or the field: printed as one line. Anything else keeps its traceback.
USER_ERRORS = (DataError, CheckpointError, FloatingPointError, ValueError, FileNotFoundError)


def repeated_overrides(argv, flag: str = "config") -> list[str]:
    """The ``--<flag>.<path>`` overrides that a command line gives more than once.

    ml_collections' ``config_flags`` does not keep the last of repeated overrides of a tuple
    field, it concatenates them (``--config.model.in_dims='(280,)' --config.model.in_dims='(600,
    200)'`` gives ``(280, 600, 200)``), so launchers refuse repeats before absl parses the flags.
    """
    seen, dup = set(), []
    prefix = f"--{flag}."
    for a in argv:
        if a.startswith(prefix):
            key = a[len(prefix):].split("=", 1)[0]
            if key in seen and key not in dup:
                dup.append(key)
            seen.add(key)
    return dup


def refuse_repeated_overrides(argv, flag: str = "config") -> None:
    """Exits with a message naming the repeated overrides (see :func:`repeated_overrides`)."""
    dup = repeated_overrides(argv, flag)
    if dup:
        raise SystemExit(f"error: {', '.join(f'--{flag}.{k}' for k in dup)} given more than once; give each "
                         "override once (ml_collections would concatenate repeated tuple values)")


def override(config, overrides: dict, *, allow_new: bool = False):
    """A copy of ``config`` with ``{"group.field": value, ...}`` set (the source is not changed).

    Raises:
      KeyError: a field that ``config`` lacks, unless ``allow_new``.
    """
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for path, value in overrides.items():
            node = config
            *parents, leaf = path.split(".")
            for p in parents:
                node = node[p]
            if not allow_new and leaf not in node:
                raise KeyError(f"config has no field {path!r}")
            node[leaf] = value
    return config


def one_line_errors(fn, *args, **kwargs):
    """Calls ``fn``; a :data:`USER_ERRORS` error exits with one ``error: ...`` line (non-zero
    status) instead of a traceback (``DIFFREC_TRACEBACK=1`` keeps the traceback)."""
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as e:
        if os.environ.get("DIFFREC_TRACEBACK"):
            raise
        raise SystemExit(f"error: {e}") from None
