"""`ponder batch --think-budget 256,1024,none`: what each thinking budget costs and buys, as a table, a
chart on the terminal, and (`--plot`) an image: accuracy against mean reasoning tokens, the
test-time-scaling curve of the s1 and NoThinking papers, measured on the user's own tasks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class BudgetSummary:
    budget: int | None  # None: no budget
    tasks: int
    accuracy: float | None  # pass@1 over the tasks with reference answers; None without any
    mean_reasoning: float
    p90_reasoning: float
    mean_seconds: float
    hit_budget: int  # tasks with a sample whose reasoning the budget ended


def summarize(budget: int | None, results: list[dict]) -> BudgetSummary:
    samples = [s for r in results for s in r["samples"]]
    reasoning = sorted(s["stats"]["reasoning_tokens"] for s in samples) or [0]
    scored = [r["pass@1"] for r in results if "pass@1" in r]
    seconds = [sum(s["stats"].get("total_s") or 0.0 for s in r["samples"]) for r in results]
    return BudgetSummary(
        budget=budget,
        tasks=len(results),
        accuracy=sum(scored) / len(scored) if scored else None,
        mean_reasoning=sum(reasoning) / len(reasoning),
        p90_reasoning=float(reasoning[math.ceil(0.9 * len(reasoning)) - 1]),  # nearest rank
        mean_seconds=sum(seconds) / len(seconds) if seconds else 0.0,
        hit_budget=sum(any(s.get("reasoning_end") == "budget" for s in r["samples"]) for r in results),
    )


def label(budget: int | None) -> str:
    return "none" if budget is None else str(budget)


def table(summaries: list[BudgetSummary]) -> str:
    rows = [("budget", "accuracy", "reasoning mean", "reasoning p90", "s/task", "hit budget")]
    for s in summaries:
        rows.append((label(s.budget), "–" if s.accuracy is None else f"{s.accuracy:.1%}", f"{s.mean_reasoning:.0f}",
                     f"{s.p90_reasoning:.0f}", f"{s.mean_seconds:.2f}", f"{s.hit_budget}/{s.tasks}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


def chart(summaries: list[BudgetSummary], height: int = 10, width: int = 48) -> str:
    """Accuracy (up) against mean reasoning tokens (across), each point marked by its budget's number."""
    points = [s for s in summaries if s.accuracy is not None]
    if not points:
        return ""
    most = max(s.mean_reasoning for s in points) or 1.0
    grid = [[" "] * (width + 1) for _ in range(height + 1)]
    for number, s in enumerate(points, 1):
        row = height - round(s.accuracy * height)
        column = round(s.mean_reasoning / most * width)
        grid[row][column] = str(number % 10)
    lines = [f"{100 - i * 100 // height:>4}% |" + "".join(cells) for i, cells in enumerate(grid)]
    lines.append("      +" + "-" * (width + 1))
    lines.append(f"       0{'mean reasoning tokens'.center(width - 8)}{most:.0f}")
    lines += [f"       {number % 10}: budget {label(s.budget)}" for number, s in enumerate(points, 1)]
    return "\n".join(lines)


def report(summaries: list[BudgetSummary], err: TextIO, terminal: bool) -> None:
    print(table(summaries), file=err)
    if terminal:
        drawn = chart(summaries)
        if drawn:
            print("\n" + drawn, file=err)


def check_plot(path: str) -> None:
    """That `--plot FILE` can be drawn: a .png or .svg name, and matplotlib (the `plot` extra) installed."""
    from importlib.util import find_spec

    from ponder.errors import UsageError

    if not path.lower().endswith((".png", ".svg")):
        raise UsageError(f"--plot writes a .png or .svg file, not {path}")
    if find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib",
                         hint="~/.local/share/ponder/venv/bin/pip install matplotlib (the `plot` extra)")
    _check_replaceable(path)


def _check_replaceable(path: str) -> None:
    """A plot is drawn again on every (resumed) sweep, so an earlier image may be replaced; anything else
    at that name (notes, a directory, a device) is the user's, and is refused before hours of runs."""
    import os
    import stat

    from ponder.errors import UsageError

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"--plot {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise UsageError(f"--plot {path} is not a regular file; nothing would be drawn there")
    with open(path, "rb") as existing:
        head = existing.read(512).lstrip()
    if not head or head.startswith((_PNG_MAGIC, b"<?xml", b"<svg")):
        return
    raise UsageError(f"--plot {path} exists and is not an image; give another name")


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def plot(summaries: list[BudgetSummary], path: str) -> None:
    """The curve as an image (PNG or SVG, from the file name), with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text in an SVG: searchable, smaller
    import matplotlib.pyplot as plt

    points = [s for s in summaries if s.accuracy is not None]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot([s.mean_reasoning for s in points], [100 * s.accuracy for s in points], marker="o")
    for s in points:
        axes.annotate(label(s.budget), (s.mean_reasoning, 100 * s.accuracy), textcoords="offset points", xytext=(4, 4))
    axes.set_xlabel("mean reasoning tokens")
    axes.set_ylabel("accuracy (pass@1, %)")
    axes.set_title("Accuracy against thinking budget")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    import io

    from ponder.files import write_bytes

    image = io.BytesIO()
    figure.savefig(image, format="svg" if path.lower().endswith(".svg") else "png")
    plt.close(figure)
    write_bytes(path, image.getvalue())  # atomic, through a link, never over a device
