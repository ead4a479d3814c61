"""strata_ref: an independent, plain PyTorch reference of the strata baseline model (docs/model.md)."""

from .model import (
    DEFAULT_CONFIG,
    NORM_PLACEMENTS,
    RefAdamW,
    RefModel,
    cross_entropy,
    greedy_generate,
    param_shapes,
    ref_adamw_step,
    resolve_config,
    rms_norm,
)

__all__ = [
    "DEFAULT_CONFIG",
    "NORM_PLACEMENTS",
    "RefAdamW",
    "RefModel",
    "cross_entropy",
    "greedy_generate",
    "param_shapes",
    "ref_adamw_step",
    "resolve_config",
    "rms_norm",
]
