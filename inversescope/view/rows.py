"""Samples laid out for a page: each row's distance bar, verdict and one mark per feature
(✓ the reference's label, ✗ another, · undefined), computed here once rather than by template
macros per cell (a site page of 20 references holds 640 samples)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

_CONTROL = {c: 0x2400 + c for c in range(0x20)} | {0x7F: 0x2421}


def visible(text: str | None) -> str:
    """``text`` with control characters as their Unicode pictures (a sample is any decoded
    token sequence: a raw tab or escape byte would vanish or break the page's layout)."""
    return "" if text is None else text.translate(_CONTROL)


def bar_scale(rows: Sequence[dict], epsilon: float) -> float:
    """The distance a full distance bar stands for on a page: its largest, at least 2 ε."""
    found = [r["distance"] for r in rows if r.get("distance") is not None]
    return max([2 * epsilon] + [d for d in found if not math.isnan(d)])


def mark(feature: str, value, ref) -> Markup:
    """One feature of a sample against its reference's label, with the values on hover."""
    f, v = escape(feature), escape(value)
    if value is None:
        return Markup(f'<span class="undef" title="{f}: undefined for this sample">·</span>')
    if ref is None:
        return Markup(f'<span title="{f}: the reference has no label">{v}</span>')
    if value == ref:
        return Markup(f'<span class="same" title="{f} {v}: the reference&#39;s">✓ {v}</span>')
    r = escape(ref)
    return Markup(f'<span class="differs" title="{f} {v}; the reference&#39;s is {r}">✗ {v}</span>')


def sample_rows(rows: Sequence[dict], features: Sequence[str], scale: float) -> list[dict]:
    """``rows`` (samples with distance, accepted, labels and ``<feature>_ref``) with what the
    sample tables print: ``shown`` text, ``bar`` width in %, ``verdict`` and ``marks``."""
    out = []
    for r in rows:
        d = r.get("distance")
        defined = d is not None and not math.isnan(d)
        out.append(
            {
                **r,
                "shown": escape(visible(r.get("text"))),
                "dist": f"{d:.3f}" if defined else "–",
                "bar": f"{min(100 * d / scale, 100):.1f}" if defined else "0",
                "verdict": "accepted" if r.get("accepted") else "refused",
                "marks": [mark(f, r.get(f), r.get(f"{f}_ref")) for f in features],
            }
        )
    return out
