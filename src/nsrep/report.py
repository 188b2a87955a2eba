"""Text formatting shared by every report nsrep prints or writes: markdown tables and numbers.

Pure string functions with no dependency on the rest of the package, so any tool (commands, sweeps, probes,
quantization, benchmarks, examples) formats its tables and counts the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["count_text", "format_table", "forms_table", "markdown_table", "ratio", "scientific"]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Lines of a markdown table with padded columns, readable as plain text too."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    ragged = [row for row in cells[1:] if len(row) != len(header)]
    if ragged:
        raise ValueError(f"every row needs {len(header)} cells like the header {list(header)}, got {ragged[0]}")
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    return [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])]


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """:func:`markdown_table` as one string (no trailing newline)."""
    return "\n".join(markdown_table(header, rows))


def scientific(n: int) -> str:
    """``n`` as ``d.dde+XX`` from its exact digits (no float overflow for counts past 1e308)."""
    if n == 0:
        return "0"
    sign, digits = ("-", str(-n)) if n < 0 else ("", str(n))
    exponent = len(digits) - 1
    mantissa = round(int(digits[:4]) / 10 ** (min(len(digits), 4) - 1), 2)
    if mantissa >= 10:  # 9.996... rounds up to the next power of ten
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{sign}{mantissa:.2f}e+{exponent:02d}"


def count_text(n: int, *, exact: bool = True) -> str:
    """A count with thousands separators; from a million on also (``exact``) or only in :func:`scientific` form."""
    if n < 10**6:
        return f"{n:,}"
    return f"{n:,} ({scientific(n)})" if exact else scientific(n)


def ratio(numerator: float, denominator: float | None) -> str:
    """``numerator / denominator`` as ``1.23x``, or ``-`` when there is nothing to compare with (0 or None)."""
    return f"{numerator / denominator:.2f}x" if denominator else "-"


def forms_table(
    rows: Sequence[tuple[str, Any, int]], max_rel_logit_diff: float | None = None, *, split: str | None = None
) -> str:
    """Accuracy of a network's forms: ``(form, result with top1/top5/loss/count, parameters)`` rows as markdown.

    Every row states how many images it scored; ``split`` (which images those are) heads the table. With
    ``max_rel_logit_diff`` a line under the table says how far the deployed form's logits are from the
    training form's.
    """
    table = format_table(
        ("form", "images", "top-1 (%)", "top-5 (%)", "loss", "params"),
        [
            (form, f"{r.count:,}", f"{r.top1:.2f}", f"{r.top5:.2f}", f"{r.loss:.4f}", f"{params:,}")
            for form, r, params in rows
        ],
    )
    if split is not None:
        table = f"scored on {split}\n{table}"
    if max_rel_logit_diff is None:
        return table
    return f"{table}\nmax relative logit difference (deployed vs training form): {max_rel_logit_diff:.2e}"
