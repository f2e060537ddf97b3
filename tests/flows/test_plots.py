"""The result plots are real PNGs of the data they are given."""

import polars as pl
from PIL import Image

from inversescope import plots


def _results() -> pl.DataFrame:
    rows = []
    for layer in range(3):
        for head in [0, 1, None]:
            for feature in ("subject", "object"):
                rows.append(
                    {
                        "site": f"L{layer}.attn" if head is None else f"L{layer}H{head}",
                        "layer": layer,
                        "head": head,
                        "feature": feature,
                        "fcr": 0.1 * layer + (0.05 if head else 0.0),
                        "ci_low": 0.05 * layer,
                        "ci_high": 0.1 * layer + 0.1,
                        "chance": 0.1,
                        "refusal_rate": 0.2 * layer,
                    }
                )
    return pl.DataFrame(rows)


def _is_png(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        extrema = im.convert("L").getextrema()
        assert extrema[0] < extrema[1]  # not a blank canvas
        return im.size


def test_heatmap_layers_and_refusal_histogram(tmp_path):
    res = _results()
    plots.fcr_heatmap(res, "subject", tmp_path / "heads.png")
    plots.fcr_per_layer(res, tmp_path / "layers.png")
    per_site = dict(res.unique("site").select("site", "refusal_rate").iter_rows())
    plots.refusal_histogram({"inversescope": per_site}, tmp_path / "refusal.png")
    for name in ("heads.png", "layers.png", "refusal.png"):
        w, h = _is_png(tmp_path / name)
        assert w > 200 and h > 150
