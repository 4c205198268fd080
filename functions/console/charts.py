"""The console's charts as data for inline SVG: geometry and colours computed here, drawn
by the templates (so every label goes through the templates' escaping).

- The confusion heatmap colours each cell by the share of its true class (row-normalised,
  so a rare class is as readable as a common one); its hover text gives the count. Past
  ``MAX_HEATMAP_CLASSES`` classes the matrix shows the classes most involved in errors, and
  the top confused pairs beside it cover the rest.
- The reliability diagram plots accuracy against mean confidence per confidence bin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from markupsafe import Markup, escape

MAX_HEATMAP_CLASSES = 40
HEATMAP_PX = 480
TOP_PAIRS = 10


def _blue(share: float) -> str:
    """White (0) to a deep blue (1)."""
    share = min(max(share, 0.0), 1.0)
    low, high = (247, 251, 255), (8, 48, 107)
    r, g, b = (round(lo + (hi - lo) * share) for lo, hi in zip(low, high))
    return f"#{r:02x}{g:02x}{b:02x}"


@dataclass(frozen=True)
class Heatmap:
    size: float  # the square's side in px (the labels sit outside it)
    cell: float
    labels: list[str]  # the classes shown, in matrix order
    cells: Markup  # the <rect> (and <text>) elements, every label escaped
    count: int  # cells drawn
    classes: int  # in the whole matrix
    shown_all: bool


def heatmap(labels: list[str], matrix: np.ndarray | list[list[int]]) -> Heatmap:
    """The cells as SVG markup, built here in one pass: a 40x40 matrix is 1,600 cells, and
    a template loop with filters per cell costs ~100x this."""
    counts = np.asarray(matrix, dtype=np.int64).reshape(len(labels), len(labels))
    index = np.arange(len(labels))
    if len(labels) > MAX_HEATMAP_CLASSES:
        errors = counts.sum(axis=0) + counts.sum(axis=1) - 2 * np.diag(counts)
        index = np.sort(np.argsort(-errors, kind="stable")[:MAX_HEATMAP_CLASSES])
    shown = counts[np.ix_(index, index)]
    totals = counts.sum(axis=1)[index]
    shares = shown / np.where(totals == 0, 1, totals)[:, None]
    side = HEATMAP_PX / max(len(index), 1)
    names = [str(escape(labels[i])) for i in index]
    fills = [_blue(k / 100) for k in range(101)]
    show_counts = len(index) <= 12
    parts = []
    for r in range(len(index)):
        for c in range(len(index)):
            n, share = int(shown[r, c]), float(shares[r, c])
            x, y = c * side, r * side
            parts.append(
                f'<rect class="cell" x="{x:.2f}" y="{y:.2f}" width="{side:.2f}" height="{side:.2f}" '
                f'fill="{fills[round(share * 100)]}" data-true="{names[r]}" data-predicted="{names[c]}" data-count="{n}">'
                f"<title>true {names[r]} → predicted {names[c]}: {n} ({share * 100:.1f}% of {names[r]})</title></rect>"
            )
            if show_counts and n:
                colour = "#ffffff" if share > 0.5 else "#1b1f24"
                parts.append(f'<text class="count" x="{x + side / 2:.2f}" y="{y + side / 2 + 4:.2f}" fill="{colour}">{n}</text>')
    return Heatmap(
        size=HEATMAP_PX,
        cell=side,
        labels=[labels[i] for i in index],
        cells=Markup("".join(parts)),
        count=len(index) ** 2,
        classes=len(labels),
        shown_all=len(index) == len(labels),
    )


@dataclass(frozen=True)
class Pair:
    true_label: str
    predicted_label: str
    count: int
    share: float  # of the true class


def top_confused(labels: list[str], matrix: np.ndarray | list[list[int]], n: int = TOP_PAIRS) -> list[Pair]:
    """The ``n`` largest off-diagonal cells, largest first (ties: matrix order)."""
    counts = np.asarray(matrix, dtype=np.int64).reshape(len(labels), len(labels)).copy()
    totals = counts.sum(axis=1)
    np.fill_diagonal(counts, 0)
    flat = np.argsort(-counts, axis=None, kind="stable")[:n]
    pairs = []
    for k in flat:
        i, j = divmod(int(k), len(labels))
        if counts[i, j] == 0:
            break
        pairs.append(Pair(labels[i], labels[j], int(counts[i, j]), float(counts[i, j] / totals[i])))
    return pairs


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    y: float
    height: float
    gap_y: float  # top of the gap bar (the expected accuracy, = mean confidence)
    gap_height: float
    count: int
    accuracy: float
    confidence: float
    low: float
    high: float


@dataclass(frozen=True)
class Reliability:
    size: float
    bars: list[Bar]


def reliability(bins: list[dict[str, float | int]], size: float = 320) -> Reliability:
    """Bars of accuracy per bin over the diagonal of perfect calibration (SVG y grows down)."""
    bars = []
    for b in bins:
        x, width = float(b["low"]) * size, (float(b["high"]) - float(b["low"])) * size
        accuracy, confidence = float(b["accuracy"]), float(b["confidence"])
        top, expected = size * (1 - accuracy), size * (1 - confidence)
        bars.append(
            Bar(
                x=x,
                width=width,
                y=top,
                height=size - top,
                gap_y=min(top, expected),
                gap_height=abs(top - expected),
                count=int(b["count"]),
                accuracy=accuracy,
                confidence=confidence,
                low=float(b["low"]),
                high=float(b["high"]),
            )
        )
    return Reliability(size=size, bars=[b for b in bars])
