"""The demo's chart: requests per interval against the provider's limit, 429s in red (SVG)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from pathlib import Path

WIDTH, PANEL, MARGIN_LEFT, MARGIN_RIGHT, TOP = 900, 170, 60, 20, 50
GREEN, RED, GREY = "#2e9e5b", "#d64545", "#555"


@dataclass(frozen=True)
class Series:
    """One mode's requests: (seconds since the mode started, HTTP status)."""

    title: str
    requests: list[tuple[float, int]]


def _bins(series: Series, width: float, count: int) -> tuple[list[int], list[int]]:
    ok, rejected = [0] * count, [0] * count
    for at, status in series.requests:
        index = min(int(at / width), count - 1)
        (ok if status < 400 else rejected)[index] += 1
    return ok, rejected


def render(panels: list[Series], *, limit_per_bin: float, bin_seconds: float, note: str) -> str:
    """An SVG with one panel per mode, sharing the time axis and the scale."""
    end = max((at for s in panels for at, _ in s.requests), default=1.0)
    count = max(1, math.ceil(end / bin_seconds) + 1)
    binned = [_bins(s, bin_seconds, count) for s in panels]
    # The scale shows the limit clearly; taller bars (a 429 storm) are cut and labelled.
    peak = limit_per_bin * 4
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    bar_w = plot_w / count
    height = TOP + PANEL * len(panels) + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="{MARGIN_LEFT}" y="22" font-size="15" font-weight="bold">'
        f"Requests per {bin_seconds:g} s against the provider's limit</text>",
        f'<text x="{MARGIN_LEFT}" y="40" fill="{GREY}">{escape(note)}</text>',
    ]
    for row, (series, (ok, rejected)) in enumerate(zip(panels, binned, strict=True)):
        base = TOP + PANEL * (row + 1) - 25
        scale = (PANEL - 62) / peak
        out.append(
            f'<text x="{MARGIN_LEFT}" y="{base - (PANEL - 45) - 6}" font-weight="bold">'
            f"{escape(series.title)}</text>"
        )
        for i, (o, r) in enumerate(zip(ok, rejected, strict=True)):
            x = MARGIN_LEFT + i * bar_w
            if o:
                out.append(
                    f'<rect x="{x:.1f}" y="{base - o * scale:.1f}" width="{bar_w * 0.9:.1f}" '
                    f'height="{o * scale:.1f}" fill="{GREEN}"/>'
                )
            if r:
                shown = min(r, max(0.0, peak - o))
                top = base - (o + shown) * scale
                out.append(
                    f'<rect x="{x:.1f}" y="{top:.1f}" width="{bar_w * 0.9:.1f}" '
                    f'height="{shown * scale:.1f}" fill="{RED}"/>'
                )
            if o + r > peak:
                out.append(
                    f'<text x="{x + bar_w * 0.45:.1f}" y="{base - peak * scale - 3:.1f}" '
                    f'text-anchor="middle" font-size="10" fill="{RED}">{o + r}</text>'
                )
        limit_y = base - limit_per_bin * scale
        out += [
            f'<line x1="{MARGIN_LEFT}" y1="{base}" x2="{WIDTH - MARGIN_RIGHT}" y2="{base}" '
            f'stroke="{GREY}"/>',
            f'<line x1="{MARGIN_LEFT}" y1="{limit_y:.1f}" x2="{WIDTH - MARGIN_RIGHT}" '
            f'y2="{limit_y:.1f}" stroke="black" stroke-dasharray="6 4"/>',
            f'<text x="{MARGIN_LEFT - 6}" y="{limit_y + 4:.1f}" text-anchor="end">limit</text>',
        ]
    axis_y = TOP + PANEL * len(panels) - 10
    for tick in range(0, count + 1, max(1, count // 10)):
        x = MARGIN_LEFT + tick * bar_w
        out.append(
            f'<text x="{x:.1f}" y="{axis_y}" text-anchor="middle" fill="{GREY}">'
            f"{tick * bin_seconds:g}s</text>"
        )
    legend_y = height - 12
    out += [
        f'<rect x="{MARGIN_LEFT}" y="{legend_y - 10}" width="12" height="12" fill="{GREEN}"/>',
        f'<text x="{MARGIN_LEFT + 18}" y="{legend_y}">accepted</text>',
        f'<rect x="{MARGIN_LEFT + 100}" y="{legend_y - 10}" width="12" height="12" fill="{RED}"/>',
        f'<text x="{MARGIN_LEFT + 118}" y="{legend_y}">429 rate limited</text>',
        f'<text x="{MARGIN_LEFT + 260}" y="{legend_y}">- - - the limit, spread evenly</text>',
        "</svg>",
    ]
    return "\n".join(out)


def write(path: Path, panels: list[Series], **options: object) -> Path:
    """Render the chart to ``path`` (SVG) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(panels, **options), encoding="utf-8")  # type: ignore[arg-type]
    return path
