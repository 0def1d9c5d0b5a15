"""When a temporary failure is tried again: one backoff for issues (``dispatch``) and the outbox."""

from __future__ import annotations

import random

from newsletter.config import DispatchSettings

__all__ = ["retry_delay"]


def retry_delay(attempts: int, settings: DispatchSettings, *, rng: random.Random | None = None) -> float:
    """Seconds until the next try after ``attempts`` tries: doubling from ``retry_initial``, capped, ±20 % jitter."""
    base = min(settings.retry_max, settings.retry_initial * 2 ** max(0, attempts - 1))
    # Jitter spreads the retries of a greylisting burst instead of sending them back together.
    return float(base * (rng or random).uniform(0.8, 1.2))
