"""What a run's :class:`~napari_mobilesamv2.steps.Progress` steps mean to a user: stage, fraction, time left."""

from __future__ import annotations

import re
import time

from ..steps import Progress

#: what a user reads for each stage of a run
STAGE_NAMES = {
    "loading": "loading models",
    "models": "models loaded",
    "embedding": "embedding",
    "detecting": "detecting",
    "decoding": "decoding",
    "assembling": "assembling",
    "plane": "plane finished",
    "linking": "linking planes",
    "downloading": "downloading",
}
#: share of a plane's work done when a step of this stage finishes (decoding spreads over the boxes)
_WITHIN_PLANE = {"embedding": 0.3, "detecting": 0.5, "assembling": 0.97}
_DECODE_START, _DECODE_SHARE = 0.5, 0.47
#: no estimate of the time left before this many seconds or this fraction
ESTIMATE_AFTER_S = 3.0
ESTIMATE_AFTER_FRACTION = 0.02


def step_fraction(step: Progress) -> float:
    """How much of the whole run is done after `step`, from 0 to 1."""
    if step.stage in ("loading", "models"):
        return 0.0
    if step.stage in ("plane", "linking", "downloading"):
        return min(1.0, step.fraction)
    within = _WITHIN_PLANE.get(step.stage, 0.0)
    if step.stage == "decoding":
        match = re.search(r"(\d+) of (\d+)", step.detail)
        share = int(match.group(1)) / max(1, int(match.group(2))) if match else 1.0
        within = _DECODE_START + _DECODE_SHARE * share
    return min(1.0, (step.done + within) / max(1, step.total))


#: what runs after a step of these stages (until the next step reports): said, since it may take long
NEXT = {"models": "embedding and detecting", "embedding": "detecting", "detecting": "decoding"}


def describe(step: Progress) -> str:
    """One line: the stage, what was done and what runs now, e.g. ``detecting: 12 boxes; decoding…``."""
    name = STAGE_NAMES.get(step.stage, step.stage)
    text = name if not step.detail else step.detail if step.detail.startswith(name) else f"{name}: {step.detail}"
    if step.stage in NEXT and not (step.stage == "detecting" and step.detail.startswith("0 boxes")):
        text += f"; {NEXT[step.stage]}…"
    return text


def format_duration(seconds: float) -> str:
    """``"8 s"``, ``"2 min 5 s"``, ``"1 h 3 min"``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s" if seconds < 600 else f"{round(seconds / 60)} min"
    return f"{seconds // 3600} h {(seconds % 3600) // 60} min"


class RunClock:
    """Elapsed time of a run and an estimate of the time left from the fraction done."""

    def __init__(self, now=time.monotonic):
        self._now = now
        self.started = now()

    @property
    def elapsed(self) -> float:
        return self._now() - self.started

    def time_left(self, fraction: float) -> float | None:
        """Seconds left at this fraction, or None while too early to tell."""
        elapsed = self.elapsed
        if elapsed < ESTIMATE_AFTER_S or not ESTIMATE_AFTER_FRACTION <= fraction < 1:
            return None
        return elapsed * (1 - fraction) / fraction
