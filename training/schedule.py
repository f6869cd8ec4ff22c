"""Alternating consistency/detail stages and loss-weight interpolation (SPEC section 5).

Stages alternate ``consistency -> detail -> consistency -> ...`` at ``switches``. The trainable
set changes at the switch step ``S``; the loss weights move linearly over the ``transition``
steps that follow: at step ``S + s`` (``0 <= s < transition``)
``w = (1 - s/transition) * w_old + (s/transition) * w_new``.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

STAGES = ("consistency", "detail")
LOSS_TERMS = ("l2", "lpips", "flow", "temporal", "csd", "teacher")  # teacher: training.teacher (SR teacher)


@dataclass
class Schedule:
    switches: list[int]
    transition: int
    base: dict[str, float]                       # lambda per loss term
    stage_scale: dict[str, dict[str, float]] = field(default_factory=dict)  # per stage multipliers
    first: str = "consistency"

    def __post_init__(self) -> None:
        if self.first not in STAGES:
            raise ValueError(f"first stage must be one of {STAGES}, got {self.first!r}")
        if sorted(self.switches) != list(self.switches) or len(set(self.switches)) != len(self.switches):
            raise ValueError(f"stage switches must be strictly increasing, got {self.switches}")
        if self.transition < 0:
            raise ValueError("transition must be >= 0")

    def _stage_index(self, step: int) -> int:
        return bisect_right(self.switches, step)

    def _name(self, index: int) -> str:
        i = STAGES.index(self.first)
        return STAGES[(i + index) % 2]

    def stage(self, step: int) -> str:
        """The stage (``consistency``/``detail``) whose trainable set is active at ``step``."""
        return self._name(self._stage_index(step))

    def stage_weights(self, stage: str) -> dict[str, float]:
        scale = self.stage_scale.get(stage, {})
        return {k: float(self.base.get(k, 0.0)) * float(scale.get(k, 1.0)) for k in LOSS_TERMS}

    def weights(self, step: int) -> dict[str, float]:
        """Loss weights at ``step`` (interpolated inside a transition window)."""
        idx = self._stage_index(step)
        new = self.stage_weights(self._name(idx))
        if idx == 0 or self.transition == 0:
            return new
        s = step - self.switches[idx - 1]
        if s >= self.transition:
            return new
        old = self.stage_weights(self._name(idx - 1))
        a = s / self.transition
        return {k: (1 - a) * old[k] + a * new[k] for k in LOSS_TERMS}


def from_config(cfg: dict) -> Schedule:
    """Build the schedule from the ``dloral`` and ``loss`` config sections."""
    d, loss = cfg["dloral"], cfg["loss"]
    return Schedule(list(d.get("switches", [])), int(d.get("transition", 0)),
                    {k: float(loss.get(k, 0.0)) for k in LOSS_TERMS},
                    {k: dict(v) for k, v in (loss.get("stage_scale") or {}).items()},
                    d.get("first_stage", "consistency"))
