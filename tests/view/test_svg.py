"""The view's SVG plots, checked against a second computation of what they draw."""

import re

import numpy as np
import pytest

from inversescope.view import svg


def test_ramp_runs_from_the_first_colour_to_the_last():
    assert svg.ramp(svg.VIRIDIS, 0) == svg.VIRIDIS[0]
    assert svg.ramp(svg.VIRIDIS, 1) == svg.VIRIDIS[-1]
    assert (
        svg.ramp(svg.VIRIDIS, 2) == svg.VIRIDIS[-1] and svg.ramp(svg.VIRIDIS, -1) == svg.VIRIDIS[0]
    )


def test_site_grid_puts_heads_in_columns_and_layer_outputs_apart():
    cells = [
        svg.Cell(f"L{i}H{h}", i, h, 0.1 * (i + h), f"{0.1 * (i + h):.2f}", f"tip <{i}{h}>")
        for i in range(2)
        for h in range(3)
    ]
    cells += [svg.Cell(f"L{i}.attn", i, None, None, "–", "no labels") for i in range(2)]
    out = str(svg.site_grid(cells, "FCR x", "FCR"))
    rects = re.findall(r'data-site="([^"]+)"><title>[^<]*</title><rect x="(\d+)" y="(\d+)"', out)
    pos = {s: (int(x), int(y)) for s, x, y in rects}
    assert pos["L0H0"][1] == pos["L0H2"][1] < pos["L1H0"][1]  # one row per layer
    assert pos["L0H0"][0] < pos["L0H1"][0] < pos["L0H2"][0] < pos["L0.attn"][0]
    gap = pos["L0.attn"][0] - pos["L0H2"][0] - (pos["L0H1"][0] - pos["L0H0"][0])
    assert gap > 0  # the layer-output column stands apart
    assert "tip &lt;01&gt;" in out and f'fill="{svg.EMPTY}"' in out  # escaped; no value: grey


def test_histogram_counts_every_defined_distance_and_draws_epsilon_where_it_lies():
    rng = np.random.default_rng(0)
    d = np.concatenate([rng.uniform(0, 0.5, 300), [np.nan] * 7])
    out = str(svg.histogram(d, 0.1, bins=20))
    counts = [int(n) for n in re.findall(r": (\d+) samples</title>", out)]
    assert sum(counts) == 300
    x_max = max(np.nanmax(d) * 1.05, 0.2)
    want, _ = np.histogram(d[~np.isnan(d)], bins=20, range=(0, x_max))
    assert counts == [int(c) for c in want if c]
    x = float(re.search(r'class="eps-line">.*?<line x1="([\d.]+)"', out).group(1))
    assert x == pytest.approx(44 + 0.1 / x_max * (560 - 44 - 12), abs=0.1)


def test_feature_bars_say_when_a_feature_has_no_defined_labels():
    rows = [
        {
            "feature": "subject",
            "fcr": 0.5,
            "ci_low": 0.4,
            "ci_high": 0.6,
            "chance": 0.1,
            "n_examples": 3,
            "n_samples": 9,
        },
        {
            "feature": "object",
            "fcr": float("nan"),
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "chance": 0.1,
            "n_examples": 0,
            "n_samples": 0,
        },
    ]
    out = str(svg.feature_bars(rows))
    assert "subject: FCR 0.500 [0.400, 0.600], chance 0.100, n = 3 examples / 9 samples" in out
    assert "no defined labels" in out
