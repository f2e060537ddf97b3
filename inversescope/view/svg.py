"""The view's plots as inline SVG, drawn on the server: no JavaScript, nothing fetched, a page
shows its plots as soon as its HTML arrives. Each mark carries a ``<title>`` (the browser's
hover text) with its numbers; heat-map cells print their value too."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from markupsafe import Markup, escape

VIRIDIS = (
    "#440154",
    "#482878",
    "#3e4989",
    "#31688e",
    "#26828e",
    "#1f9e89",
    "#35b779",
    "#6ece58",
    "#b5de2b",
    "#fde725",
)
REDS = ("#fff5eb", "#fee6ce", "#fdd0a2", "#fdae6b", "#fd8d3c", "#f16913", "#d94801", "#8c2d04")
SERIES_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
EMPTY = "#d9d9d9"


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def ramp(colours: Sequence[str], t: float) -> str:
    """The colour at ``t`` in [0, 1] along ``colours`` (linear in RGB)."""
    t = min(max(t, 0.0), 1.0) * (len(colours) - 1)
    i = min(int(t), len(colours) - 2)
    a, b = _rgb(colours[i]), _rgb(colours[i + 1])
    f = t - i
    return "#" + "".join(f"{round(x + (y - x) * f):02x}" for x, y in zip(a, b, strict=True))


def _ink(fill: str) -> str:
    r, g, b = _rgb(fill)
    return "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"


def _svg(width: float, height: float, label: str, body: list[str], cls: str) -> Markup:
    return Markup(
        f'<svg class="{cls}" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label="{escape(label)}">' + "".join(body) + "</svg>"
    )


def _text(x: float, y: float, s: str, anchor: str = "middle", cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{c}>{escape(s)}</text>'


# --- the site grid: layers x heads, then each layer's whole attention output ---------------
@dataclass(frozen=True)
class Cell:
    site: str
    layer: int
    head: int | None  # None: the layer-output site L{l}.attn
    value: float | None
    text: str  # printed in the cell
    tip: str  # hover text
    href: str | None = None
    marked: bool = False  # a dot in the corner (FCR: the interval lies above chance)


def site_grid(
    cells: Sequence[Cell],
    label: str,
    legend: str,
    colours: Sequence[str] = VIRIDIS,
    vmax: float = 1.0,
) -> Markup:
    """A heat map over the site grid: one row per layer, one column per head, and one column
    for the layer outputs (``L{l}.attn``) apart on the right. Values in [0, vmax]; ``label``
    names the map for screen readers, ``legend`` heads its colour bar."""
    layers = sorted({c.layer for c in cells})
    heads = sorted({c.head for c in cells if c.head is not None})
    has_attn = any(c.head is None for c in cells)
    cw, ch, left, top, gap = 36, 21, 34, 26, 10
    col = {h: left + i * cw for i, h in enumerate(heads)}
    col[None] = left + len(heads) * cw + (gap if heads else 0)
    right = col[None] + (cw if has_attn else -gap)
    row = {layer: top + i * ch for i, layer in enumerate(layers)}
    body = [_text(col[h] + cw / 2, top - 10, f"H{h}", cls="axis") for h in heads]
    if has_attn:
        body.append(_text(col[None] + cw / 2, top - 10, "attn", cls="axis"))
    body += [
        _text(left - 6, row[layer] + ch / 2 + 4, f"L{layer}", "end", "axis") for layer in layers
    ]
    for c in cells:
        x, y = col[c.head], row[c.layer]
        fill = EMPTY if c.value is None or math.isnan(c.value) else ramp(colours, c.value / vmax)
        ink = _ink(fill)
        dot = (
            f'<circle cx="{x + cw - 4}" cy="{y + 4}" r="2" style="fill: {ink}"/>'
            if c.marked
            else ""
        )
        mark = (
            f'<g class="cell" data-site="{escape(c.site)}"><title>{escape(c.tip)}</title>'
            f'<rect x="{x}" y="{y}" width="{cw}" height="{ch}" fill="{fill}" stroke="#fff"/>{dot}'
            f'<text x="{x + cw / 2}" y="{y + ch / 2 + 4}" text-anchor="middle" '
            f'style="fill: {ink}" class="value">{escape(c.text)}</text></g>'
        )
        body.append(f'<a href="{escape(c.href)}">{mark}</a>' if c.href else mark)
    legend_x = right + 14
    height = top + len(layers) * ch + 8
    body += _legend(legend_x, top, max(height - top - 8, 60), colours, vmax, legend)
    return _svg(legend_x + 56, max(height, top + 70), label, body, "heatmap")


def _legend(x: float, y: float, h: float, colours: Sequence[str], vmax: float, label: str):
    gid = "g" + str(abs(hash((tuple(colours), label))) % 10**8)
    stops = "".join(
        f'<stop offset="{i / (len(colours) - 1):.3f}" stop-color="{c}"/>'
        for i, c in enumerate(reversed(colours))
    )
    return [
        f'<defs><linearGradient id="{gid}" x1="0" y1="0" x2="0" y2="1">{stops}</linearGradient>'
        "</defs>",
        f'<rect x="{x}" y="{y}" width="12" height="{h:.0f}" fill="url(#{gid})"/>',
        _text(x + 16, y + 8, f"{vmax:g}", "start", "axis"),
        _text(x + 16, y + h, "0", "start", "axis"),
        _text(x + 16, y + h / 2 + 4, label, "start", "axis"),
    ]


# --- distances: a histogram with the ε line ------------------------------------------------
def histogram(values: np.ndarray, epsilon: float, bins: int = 40) -> Markup:
    """Sample distances in ``bins`` bins, accepted (below ε) and refused apart, with ε as a
    vertical line. Empty samples (NaN distance) are counted in the caption."""
    d = values[~np.isnan(values)]
    x_max = max(float(d.max()) * 1.05 if d.size else 0.0, 2 * epsilon)
    counts, edges = np.histogram(d, bins=bins, range=(0.0, x_max))
    w, h, left, top, bottom = 560, 190, 44, 12, 34
    pw, ph = w - left - 12, h - top - bottom
    y_max = max(int(counts.max()) if counts.size else 0, 1)

    def sx(v: float) -> float:
        return left + v / x_max * pw

    body = []
    for c, lo, hi in zip(counts, edges[:-1], edges[1:], strict=True):
        if c:
            bh = c / y_max * ph
            cls = "bar accepted" if hi <= epsilon else "bar refused"
            body.append(
                f'<rect class="{cls}" x="{sx(lo):.1f}" y="{top + ph - bh:.1f}" '
                f'width="{max(sx(hi) - sx(lo) - 1, 1):.1f}" height="{bh:.1f}">'
                f"<title>{lo:.3f} to {hi:.3f}: {c} samples</title></rect>"
            )
    body.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" class="ax"/>')
    for t in np.linspace(0, x_max, 6):
        body.append(_text(sx(t), top + ph + 14, f"{t:.2f}", cls="axis"))
    body.append(_text(left - 6, top + 8, str(y_max), "end", "axis"))
    body.append(_text(left - 6, top + ph, "0", "end", "axis"))
    body.append(
        _text(left + pw / 2, h - 4, "cosine distance to the reference activation", cls="axis")
    )
    ex = sx(epsilon)
    body.append(
        f'<g class="eps-line"><title>ε = {epsilon:g}: samples left of it are accepted</title>'
        f'<line x1="{ex:.1f}" y1="{top - 4}" x2="{ex:.1f}" y2="{top + ph}"/>'
        + _text(ex + 4, top + 8, f"ε = {epsilon:g}", "start", "eps-label")
        + "</g>"
    )
    return _svg(w, h, f"histogram of {d.size} sample distances, epsilon {epsilon:g}", body, "hist")


# --- FCR across layers (the paper's layer plots) -------------------------------------------
@dataclass
class Series:
    name: str
    points: list[tuple[int, float, float, float]]  # (layer, fcr, ci_low, ci_high)
    dots: list[tuple[int, float, str]] = field(default_factory=list)  # (layer, fcr, hover)


def layer_plot(series: Sequence[Series], chance: Sequence[tuple[int, float]], n_layers: int):
    """FCR against layer, one line per kind of site with its interval as a band, the single
    sites as dots, chance dotted."""
    w, h, left, top, bottom = 620, 260, 44, 14, 40
    pw, ph = w - left - 170, h - top - bottom
    span = max(n_layers - 1, 1)

    def sx(layer: float) -> float:
        return left + layer / span * pw

    def sy(v: float) -> float:
        return top + (1 - v) * ph

    body = [f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>']
    for v in (0, 0.25, 0.5, 0.75, 1):
        body.append(_text(left - 6, sy(v) + 4, f"{v:g}", "end", "axis"))
    for layer in range(n_layers):
        body.append(_text(sx(layer), top + ph + 14, f"L{layer}", cls="axis"))
    body.append(_text(left + pw / 2, h - 6, "layer", cls="axis"))
    if chance:
        pts = " ".join(f"{sx(x):.1f},{sy(v):.1f}" for x, v in chance)
        body.append(f'<polyline class="chance" points="{pts}"><title>chance</title></polyline>')
    for i, s in enumerate(series):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        ok = [p for p in s.points if not math.isnan(p[1])]
        if ok:
            band = [f"{sx(x):.1f},{sy(hi):.1f}" for x, _, _, hi in ok]
            band += [f"{sx(x):.1f},{sy(lo):.1f}" for x, _, lo, _ in reversed(ok)]
            body.append(f'<polygon points="{" ".join(band)}" fill="{colour}" class="band"/>')
            pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y, _, _ in ok)
            body.append(f'<polyline points="{pts}" stroke="{colour}" class="line"/>')
        for x, y, tip in s.dots:
            body.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}" class="dot">'
                f"<title>{escape(tip)}</title></circle>"
            )
        ly = top + 10 + i * 18
        body.append(
            f'<rect x="{left + pw + 14}" y="{ly - 8}" width="12" height="10" fill="{colour}"/>'
        )
        body.append(_text(left + pw + 30, ly + 1, s.name, "start", "axis"))
    ly = top + 10 + len(series) * 18
    body.append(
        f'<line x1="{left + pw + 14}" y1="{ly - 3}" x2="{left + pw + 26}" y2="{ly - 3}" '
        'class="chance"/>'
    )
    body.append(_text(left + pw + 30, ly + 1, "chance", "start", "axis"))
    return _svg(w, h, "FCR across layers", body, "layers")


# --- FCR per feature at one site ------------------------------------------------------------
def feature_bars(rows: Sequence[dict]) -> Markup:
    """One bar per feature: FCR, its interval as a whisker, chance as a tick."""
    w, bh, left, top = 460, 22, 90, 6
    pw = w - left - 60
    h = top + len(rows) * bh + 22

    def sx(v: float) -> float:
        return left + v * pw

    body = []
    for i, r in enumerate(rows):
        y = top + i * bh
        body.append(_text(left - 6, y + 15, r["feature"], "end", "axis"))
        fcr = r["fcr"]
        if fcr is None or math.isnan(fcr):
            body.append(_text(left + 4, y + 15, "no defined labels", "start", "axis"))
            continue
        tip = (
            f"{r['feature']}: FCR {fcr:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}], "
            f"chance {r['chance']:.3f}, n = {r['n_examples']} examples / {r['n_samples']} samples"
        )
        body.append(
            f'<g class="fbar"><title>{escape(tip)}</title>'
            f'<rect x="{left}" y="{y + 4}" width="{max(sx(fcr) - left, 1):.1f}" height="14"/>'
            f'<line class="ci" x1="{sx(r["ci_low"]):.1f}" x2="{sx(r["ci_high"]):.1f}" '
            f'y1="{y + 11}" y2="{y + 11}"/>'
            f'<line class="chance-tick" x1="{sx(r["chance"]):.1f}" x2="{sx(r["chance"]):.1f}" '
            f'y1="{y + 1}" y2="{y + 21}"/>' + _text(w - 4, y + 15, f"{fcr:.2f}", "end") + "</g>"
        )
    for v in (0, 0.5, 1):
        body.append(_text(sx(v), h - 4, f"{v:g}", cls="axis"))
    return _svg(w, h, "FCR per feature", body, "fbars")
