"""Small inline-SVG charts for the HTML report: no plotting library, no scripts, no network.

Every function returns one `<svg>` element as a string, sized in CSS pixels, with a `<title>`
(shown as a tooltip and read by screen readers) and its numbers written as text, so the page is
readable without hovering. Colours come from a fixed palette that stays legible in print.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Series colours (colour-blind-safe, Okabe-Ito order).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
BUDGET_COLOUR = "#C0392B"
GRID = "#e3e3e3"
INK = "#222"
MUTED = "#666"


def esc(x: object) -> str:
    """HTML/SVG-escape any value's text."""
    return html.escape(str(x), quote=True)


def fmt_num(x: float, digits: int = 3) -> str:
    """A short number: 3 significant digits (0.531, 12.5, 1.23e+03 -> 1230)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    decimals = max(0, digits - 1 - mag)
    return f"{x:.{decimals}f}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5, 5 x 10^k steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 12))
    return ticks


def tick_label(t: float, ticks: Sequence[float]) -> str:
    """A tick's text with as many decimals as the tick step needs (0, 0.05, 0.10 ...)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(t) or 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if round(step * 10**decimals, 6) % 1:  # 2.5 x 10^k
        decimals += 1
    return f"{t:.{decimals}f}"


def _open(width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}" '
        'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif" font-size="13">',
        f"<title>{esc(title)}</title>",
    ]


@dataclass(frozen=True)
class Bar:
    """One bar of a horizontal bar chart."""

    label: str
    value: float
    colour: str = PALETTE[0]
    note: str = ""


def bar_chart(
    bars: Sequence[Bar],
    *,
    title: str,
    unit: str = "ms",
    budget: float | None = None,
    budget_label: str = "budget",
    width: int = 640,
) -> str:
    """Horizontal bars with their values written at the end, and an optional budget line."""
    row, top, left, right = 30, 26, 150, 150
    height = top + row * len(bars) + 30
    hi = max(
        [b.value for b in bars if b.value is not None] + ([budget] if budget else []) + [1e-12]
    )
    ticks = nice_ticks(0.0, hi * 1.05)
    span = ticks[-1] or 1.0
    plot_w = width - left - right
    value_labels: list[str] = []  # drawn last, haloed, so the budget line never hides a value

    def x(v: float) -> float:
        return left + plot_w * v / span

    out = _open(width, height, title)
    for t in ticks:
        out.append(
            f'<line x1="{x(t):.1f}" y1="{top - 6}" x2="{x(t):.1f}" y2="{height - 26}" stroke="{GRID}"/>'
        )
        out.append(
            f'<text x="{x(t):.1f}" y="{height - 10}" text-anchor="middle" fill="{MUTED}">'
            f"{esc(tick_label(t, ticks))}</text>"
        )
    out.append(
        f'<text x="{x(ticks[-1]) + 22:.1f}" y="{height - 10}" fill="{MUTED}">{esc(unit)}</text>'
    )
    for i, b in enumerate(bars):
        y = top + i * row
        out.append(
            f'<text x="{left - 8}" y="{y + 15}" text-anchor="end" fill="{INK}">{esc(b.label)}</text>'
        )
        if b.value is None:
            out.append(f'<text x="{left + 4}" y="{y + 15}" fill="{MUTED}">not measured</text>')
            continue
        w = max(1.0, x(b.value) - left)
        out.append(
            f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row - 10}" rx="2" fill="{b.colour}">'
            f"<title>{esc(b.label)}: {esc(fmt_num(b.value, 4))} {esc(unit)}</title></rect>"
        )
        label = f"{fmt_num(b.value, 4)} {unit}" + (f"  {b.note}" if b.note else "")
        value_labels.append(
            f'<text x="{left + w + 6:.1f}" y="{y + 15}" fill="{INK}" paint-order="stroke" '
            f'stroke="#fff" stroke-width="4" stroke-linejoin="round">{esc(label)}</text>'
        )
    if budget:
        bx = x(budget)
        out.append(
            f'<line x1="{bx:.1f}" y1="{top - 10}" x2="{bx:.1f}" y2="{height - 26}" '
            f'stroke="{BUDGET_COLOUR}" stroke-width="2" stroke-dasharray="6 3"/>'
        )
        out.append(
            f'<text x="{bx:.1f}" y="{top - 13}" text-anchor="middle" fill="{BUDGET_COLOUR}" '
            f'font-weight="600">{esc(budget_label)} {esc(fmt_num(budget, 4))} {esc(unit)}</text>'
        )
    out.extend(value_labels)
    out.append("</svg>")
    return "\n".join(out)


@dataclass(frozen=True)
class Series:
    """A line of points on an x/y chart."""

    name: str
    points: Sequence[tuple[float, float]]
    colour: str = PALETTE[0]
    dashed: bool = False
    filled: bool = True
    labels: Sequence[str] = ()


def xy_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    hlines: Sequence[tuple[float, str, str]] = (),
    width: int = 640,
    height: int = 300,
    x_integer: bool = False,
    y_from_zero: bool = False,
) -> str:
    """Points joined by lines, one colour per series, a legend, and horizontal reference lines
    (value, label, colour), e.g. the budget."""
    left, right, top, bottom = 64, 24, 34, 48
    xs = [p[0] for s in series for p in s.points]
    ys = [p[1] for s in series for p in s.points] + [h[0] for h in hlines]
    if not xs:
        xs, ys = [0.0, 1.0], [0.0, 1.0]
    x_lo, x_hi = min(xs), max(xs)
    if x_integer:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    elif x_hi == x_lo:
        x_lo, x_hi = x_lo - 0.5 * (abs(x_lo) or 1), x_hi + 0.5 * (abs(x_hi) or 1)
    else:
        pad = 0.06 * (x_hi - x_lo)
        x_lo, x_hi = x_lo - pad, x_hi + pad
    y_lo, y_hi = (0.0 if y_from_zero else min(ys)), max(ys)
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 0.5 * (abs(y_lo) or 1), y_hi + 0.5 * (abs(y_hi) or 1)
    pad = 0.08 * (y_hi - y_lo)
    yt = nice_ticks(y_lo if y_from_zero else y_lo - pad, y_hi + pad)
    y_lo, y_hi = yt[0], yt[-1]
    pw, ph = width - left - right, height - top - bottom

    def px(v: float) -> float:
        return left + pw * (v - x_lo) / (x_hi - x_lo)

    def py(v: float) -> float:
        return top + ph * (1 - (v - y_lo) / (y_hi - y_lo))

    out = _open(width, height, title)
    for t in yt:
        out.append(
            f'<line x1="{left}" y1="{py(t):.1f}" x2="{width - right}" y2="{py(t):.1f}" stroke="{GRID}"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end" fill="{MUTED}">{esc(tick_label(t, yt))}</text>'
        )
    xt = (
        list(range(math.ceil(x_lo), math.floor(x_hi) + 1))
        if x_integer
        else [t for t in nice_ticks(x_lo, x_hi) if x_lo <= t <= x_hi]
    )
    for t in xt:
        out.append(
            f'<line x1="{px(t):.1f}" y1="{top + ph}" x2="{px(t):.1f}" y2="{top + ph + 5}" stroke="{MUTED}"/>'
        )
        out.append(
            f'<text x="{px(t):.1f}" y="{top + ph + 18}" text-anchor="middle" fill="{MUTED}">'
            f"{esc(t if x_integer else tick_label(t, xt))}</text>"
        )
    out.append(
        f'<line x1="{left}" y1="{top + ph}" x2="{width - right}" y2="{top + ph}" stroke="{MUTED}"/>'
    )
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="{MUTED}"/>')
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle" fill="{INK}">{esc(x_label)}</text>'
    )
    out.append(
        f'<text x="14" y="{top + ph / 2:.1f}" text-anchor="middle" fill="{INK}" '
        f'transform="rotate(-90 14 {top + ph / 2:.1f})">{esc(y_label)}</text>'
    )
    for i, (value, label, colour) in enumerate(hlines):
        y = py(value)
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="{colour}" '
            'stroke-width="1.5" stroke-dasharray="6 3"/>'
        )
        # labels alternate right and left, so two close lines keep legible labels
        tx, anchor = (width - right - 4, "end") if i % 2 == 0 else (left + 6, "start")
        out.append(
            f'<text x="{tx}" y="{y - 5:.1f}" text-anchor="{anchor}" fill="{colour}">{esc(label)}</text>'
        )
    lx = left + 8
    for s in series:
        pts = sorted(s.points) if not x_integer else list(s.points)
        if len(pts) > 1:
            path = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in pts)
            dash = ' stroke-dasharray="5 4"' if s.dashed else ""
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{s.colour}" stroke-width="2"{dash}/>'
            )
        for j, (a, b) in enumerate(s.points):
            fill = s.colour if s.filled else "#fff"
            tip = f"{s.name}: x {fmt_num(a, 4)}, y {fmt_num(b, 4)}"
            out.append(
                f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="4.5" fill="{fill}" stroke="{s.colour}" '
                f'stroke-width="2"><title>{esc(tip)}</title></circle>'
            )
            if j < len(s.labels) and s.labels[j]:
                near_right = px(a) > width - right - 60
                anchor = "end" if near_right else "start"
                tx = px(a) - 7 if near_right else px(a) + 7
                out.append(
                    f'<text x="{tx:.1f}" y="{py(b) - 7:.1f}" text-anchor="{anchor}" fill="{s.colour}">'
                    f"{esc(s.labels[j])}</text>"
                )
        # legend along the top
        dash = ' stroke-dasharray="5 4"' if s.dashed else ""
        out.append(
            f'<line x1="{lx}" y1="{top - 16}" x2="{lx + 18}" y2="{top - 16}" stroke="{s.colour}" '
            f'stroke-width="2"{dash}/>'
        )
        out.append(
            f'<circle cx="{lx + 9}" cy="{top - 16}" r="3.5" fill="{s.colour if s.filled else "#fff"}" '
            f'stroke="{s.colour}" stroke-width="2"/>'
        )
        out.append(f'<text x="{lx + 24}" y="{top - 12}" fill="{INK}">{esc(s.name)}</text>')
        lx += 36 + 7 * len(s.name)
    out.append("</svg>")
    return "\n".join(out)


def meter(fraction: float, *, colour: str = PALETTE[0], width: int = 90) -> str:
    """A tiny inline bar for table cells (0..1), with the value kept as text beside it by callers."""
    f = 0.0 if fraction is None or not math.isfinite(fraction) else min(1.0, max(0.0, fraction))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="meter" width="{width}" height="10" '
        f'viewBox="0 0 {width} 10" aria-hidden="true"><rect width="{width}" height="10" rx="2" fill="{GRID}"/>'
        f'<rect width="{max(0.0, f * width):.1f}" height="10" rx="2" fill="{colour}"/></svg>'
    )
