"""The learning-rate schedule of the paper (section 3.3) and the released ``learning_schedule``.

lr_k = base_lr · B/256, scaled linearly from 0 over the first ``warmup_steps`` steps, then cosine-decayed to
0 over the remaining ``max_steps − warmup_steps`` steps.
"""

from __future__ import annotations

import math


def learning_rate(step: int, base_lr: float, batch_size: int, max_steps: int, warmup_steps: int) -> float:
    """lr at optimizer step ``step`` (0-based). Warm-up divides by ``warmup_steps``; the cosine by the rest."""
    if max_steps <= 0 or warmup_steps < 0 or warmup_steps > max_steps:
        raise ValueError(f"need 0 <= warmup_steps <= max_steps and max_steps > 0, got {warmup_steps}, {max_steps}")
    scaled_lr = base_lr * batch_size / 256
    if step < warmup_steps:
        return scaled_lr * step / warmup_steps
    return cosine_decay(step - warmup_steps, max_steps - warmup_steps, scaled_lr)


def cosine_decay(step: int, total_steps: int, value: float) -> float:
    """value · (1 + cos(π·step/total_steps))/2: ``value`` at step 0, 0 from ``total_steps`` on."""
    if total_steps <= 0:
        return 0.0
    return value * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
