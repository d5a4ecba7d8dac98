"""The spend report as text: one line of totals, then one row per model, agent and task."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crewthrottle._spend import SpendRow

__all__ = ["render"]

#: Widths of the text columns, at most.
WIDTHS = {"model": 28, "agent": 24, "task": 44}
HEADERS = (
    *("model", "agent", "task", "calls", "HTTP", "retries", "429s", "prompt", "completion"),
    *("tokens", "wait s", "calls/task", "max", ""),
)


def render(rows: list[SpendRow], total: SpendRow, flag_calls: int) -> str:
    """``rows`` under a line of ``total``; rows flagged (over ``flag_calls``) marked ``!``."""
    lines = [
        f"Who spent the budget: {total.calls:,} LLM calls, {total.requests:,} HTTP requests "
        f"({total.retries:,} retries, {total.rate_limited:,} x 429), {total.tokens:,} tokens, "
        f"{total.wait:.2f} s waiting for permits"
    ]
    table = [list(HEADERS), *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    for line in table:
        cells = [
            cell.ljust(width) if i < 3 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(2, "-" * len(lines[1]))
    if total.flagged:
        plural = "s" if flag_calls > 1 else ""
        lines.append(
            f"! a task execution made more than {flag_calls} LLM call{plural} (max_iter, a tool "
            "loop or guardrail retries?)"
        )
    return "\n".join(lines)


def _cells(row: SpendRow) -> list[str]:
    per_task = row.calls_per_execution
    counts = [row.calls, row.requests, row.retries, row.rate_limited, row.prompt_tokens]
    counts += [row.completion_tokens, row.tokens]
    return [
        _cut(row.model, WIDTHS["model"]),
        _cut(row.agent, WIDTHS["agent"]),
        _cut(row.task, WIDTHS["task"]),
        *(f"{count:,}" for count in counts),
        f"{row.wait:.2f}",
        "-" if per_task is None else f"{per_task:.1f}",
        f"{row.max_calls_per_execution}" if row.executions else "-",
        "!" if row.flagged else "",
    ]


def _cut(text: str, width: int) -> str:
    """``text`` in ``width`` characters, keeping a tag (`` #...``) at its end if it has one."""
    if len(text) <= width:
        return text
    head, sep, tag = text.rpartition(" #")
    if sep and len(tag) < width // 2:
        return f"{head[: width - len(tag) - 3].rstrip()}… #{tag}"
    return f"{text[: width - 1].rstrip()}…"
