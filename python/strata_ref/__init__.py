"""strata_ref: an independent, plain PyTorch reference of the strata models (docs/model.md, docs/attn_res.md)."""

from .model import (
    DEFAULT_CONFIG,
    ATTENTIONS,
    NORM_PLACEMENTS,
    RESIDUALS,
    RefAdamW,
    RefModel,
    attn_res,
    cross_entropy,
    greedy_generate,
    moda_attention,
    param_shapes,
    ref_adamw_step,
    resolve_config,
    rms_norm,
)

__all__ = [
    "DEFAULT_CONFIG",
    "ATTENTIONS",
    "NORM_PLACEMENTS",
    "RESIDUALS",
    "RefAdamW",
    "RefModel",
    "attn_res",
    "cross_entropy",
    "greedy_generate",
    "moda_attention",
    "param_shapes",
    "ref_adamw_step",
    "resolve_config",
    "rms_norm",
]
