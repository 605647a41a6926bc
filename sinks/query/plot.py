"""``rankwatch steps --plot``: every rank's curve of one metric, so a drifting rank stands out.

Two views in one PNG: all ranks overlaid (the rank furthest from the per-step median drawn
in red and named), and one small panel per rank side by side on a shared y axis. Non-finite
values (a NaN loss) cannot be drawn as points: each rank's first one is a red dashed line.
Matplotlib runs headless (the Agg backend), so this works on a server without a display.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from rankwatch.sinks.storage.base import StepPoint

MAX_PANELS = 32


def curves(points: Sequence[StepPoint]) -> dict[int, tuple[list[int], list[float]]]:
    """Per rank: steps and values (None as NaN, so the line breaks there)."""
    out: dict[int, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for p in points:
        steps, values = out[p.rank]
        steps.append(p.step)
        values.append(math.nan if p.value is None else p.value)
    return dict(out)


def furthest_rank(per_rank: dict[int, tuple[list[int], list[float]]]) -> int | None:
    """The rank whose finite values are furthest, on average, from the per-step median.

    >>> furthest_rank({0: ([1, 2], [1.0, 1.0]), 1: ([1, 2], [1.1, 1.0]), 2: ([1, 2], [3.0, 4.0])})
    2
    """
    by_step: dict[int, list[float]] = defaultdict(list)
    for steps, values in per_rank.values():
        for step, value in zip(steps, values, strict=True):
            if math.isfinite(value):
                by_step[step].append(value)
    median = {step: statistics.median(vs) for step, vs in by_step.items()}
    distance: dict[int, float] = {}
    for rank, (steps, values) in per_rank.items():
        gaps = [abs(v - median[s]) for s, v in zip(steps, values, strict=True) if math.isfinite(v)]
        if gaps:
            distance[rank] = sum(gaps) / len(gaps)
    if len(distance) < 2:
        return None
    return max(distance, key=lambda rank: distance[rank])


def plot_steps(points: Sequence[StepPoint], *, job_id: str, metric: str, path: Path) -> Path:
    """Write the PNG; return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_rank = curves(points)
    ranks = sorted(per_rank)
    panels = ranks[:MAX_PANELS]
    cols = min(8, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    figure = plt.figure(figsize=(max(10.0, 2.2 * cols), 4.5 + 2.0 * rows), dpi=100)
    grid = figure.add_gridspec(1 + rows, cols, height_ratios=[2.2] + [1.0] * rows, hspace=0.55)
    overlay = figure.add_subplot(grid[0, :])
    odd = furthest_rank(per_rank)
    colours = plt.get_cmap("tab20")
    for i, rank in enumerate(ranks):
        steps, values = per_rank[rank]
        if rank == odd:
            continue  # drawn last, on top
        overlay.plot(
            steps,
            values,
            color=colours(i % 20),
            linewidth=1.0,
            alpha=0.8,
            label=f"rank {rank}" if len(ranks) <= 16 else None,
        )
    if odd is not None:
        steps, values = per_rank[odd]
        overlay.plot(
            steps,
            values,
            color="red",
            linewidth=2.2,
            label=f"rank {odd} (furthest from the median)",
        )
    overlay.set_title(f"{job_id}: {metric} of {len(ranks)} rank(s)")
    overlay.set_xlabel("step")
    overlay.set_ylabel(metric)
    overlay.grid(alpha=0.3)
    if ranks:
        overlay.legend(fontsize=7, ncol=4, loc="best")
    first_axis = None
    for index, rank in enumerate(panels):
        axis = figure.add_subplot(
            grid[1 + index // cols, index % cols], sharex=first_axis, sharey=first_axis
        )
        first_axis = first_axis or axis
        steps, values = per_rank[rank]
        axis.plot(steps, values, color="red" if rank == odd else "tab:blue", linewidth=1.0)
        bad = [s for s, v in zip(steps, values, strict=True) if not math.isfinite(v)]
        if bad:
            axis.axvline(bad[0], color="red", linestyle="--", linewidth=1.0)
            overlay.axvline(bad[0], color="red", linestyle="--", linewidth=0.8)
        axis.set_title(f"rank {rank}" + (" (non-finite)" if bad else ""), fontsize=8)
        axis.tick_params(labelsize=6)
        axis.grid(alpha=0.3)
    if len(ranks) > MAX_PANELS:
        figure.text(
            0.5,
            0.01,
            f"panels show the first {MAX_PANELS} of {len(ranks)} ranks (select with --ranks)",
            ha="center",
            fontsize=8,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
