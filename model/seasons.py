"""Whether a date falls in a season the training snapshots covered: churn rates move with the season, so a model
judged on (or scoring) a season it never saw deserves a warning, in training's report and on every scorecard."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

SEASON_TOLERANCE_DAYS = 46


def seasons_covered(
    train_dates: Sequence[datetime], as_of: datetime, tolerance_days: int = SEASON_TOLERANCE_DAYS
) -> bool:
    """Whether some training snapshot lies within ``tolerance_days`` of ``as_of``'s day of the year."""
    doy = as_of.timetuple().tm_yday
    for d in train_dates:
        diff = abs(d.timetuple().tm_yday - doy)
        if min(diff, 365 - diff) <= tolerance_days:
            return True
    return False
