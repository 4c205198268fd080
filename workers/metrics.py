"""Figures of a run's efficiency (batch latency percentiles).

The metrics of the predictions themselves are defined once, in ``shared.metrics``, and the
summary built from them in ``shared.summaries``.
"""

from __future__ import annotations

import math

import numpy as np


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values``; NaN for none (the summary serves it as null)."""
    return float(np.percentile(np.asarray(values), q)) if values else math.nan
