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
class Cell:
    x: float
    y: float
    size: float
    fill: str
    count: int
    share: float
    true_label: str
    predicted_label: str
    text_fill: str


@dataclass(frozen=True)
class Heatmap:
    size: float  # the square's side in px (the labels sit outside it)
    cell: float
    labels: list[str]  # the classes shown, in matrix order
    cells: list[Cell]
    classes: int  # in the whole matrix
    shown_all: bool
    show_counts: bool


def heatmap(labels: list[str], matrix: list[list[int]]) -> Heatmap:
    counts = np.asarray(matrix, dtype=np.int64).reshape(len(labels), len(labels))
    index = np.arange(len(labels))
    if len(labels) > MAX_HEATMAP_CLASSES:
        errors = counts.sum(axis=0) + counts.sum(axis=1) - 2 * np.diag(counts)
        index = np.sort(np.argsort(-errors, kind="stable")[:MAX_HEATMAP_CLASSES])
    shown = counts[np.ix_(index, index)]
    totals = counts.sum(axis=1)[index]
    side = HEATMAP_PX / max(len(index), 1)
    cells = []
    for r, i in enumerate(index):
        for c, j in enumerate(index):
            share = float(shown[r, c] / totals[r]) if totals[r] else 0.0
            cells.append(
                Cell(
                    x=c * side, y=r * side, size=side, fill=_blue(share), count=int(shown[r, c]), share=share,
                    true_label=labels[i], predicted_label=labels[j], text_fill="#ffffff" if share > 0.5 else "#1b1f24",
                )
            )
    return Heatmap(
        size=HEATMAP_PX, cell=side, labels=[labels[i] for i in index], cells=cells, classes=len(labels),
        shown_all=len(index) == len(labels), show_counts=len(index) <= 12,
    )


@dataclass(frozen=True)
class Pair:
    true_label: str
    predicted_label: str
    count: int
    share: float  # of the true class


def top_confused(labels: list[str], matrix: list[list[int]], n: int = TOP_PAIRS) -> list[Pair]:
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
                x=x, width=width, y=top, height=size - top, gap_y=min(top, expected), gap_height=abs(top - expected),
                count=int(b["count"]), accuracy=accuracy, confidence=confidence, low=float(b["low"]), high=float(b["high"]),
            )
        )
    return Reliability(size=size, bars=[b for b in bars])
