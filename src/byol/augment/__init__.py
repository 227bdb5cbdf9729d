"""BYOL's view augmentations: pure batched operations (:mod:`.functional`) and the T / T' pipeline."""

from byol.augment.pipeline import (
    BYOL_T,
    BYOL_T_PRIME,
    LINEAR_EVAL_VIEW,
    PRESETS,
    TwoViews,
    ViewConfig,
    ViewParams,
    ViewPipeline,
    evaluation_view,
    get_views,
    sample_crop_boxes,
)

__all__ = [
    "BYOL_T",
    "BYOL_T_PRIME",
    "LINEAR_EVAL_VIEW",
    "PRESETS",
    "TwoViews",
    "ViewConfig",
    "ViewParams",
    "ViewPipeline",
    "evaluation_view",
    "get_views",
    "sample_crop_boxes",
]
