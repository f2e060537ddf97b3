"""PNG plots beside the results: FCR per layer x head, FCR per layer, refusal-rate histogram."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402


def fcr_heatmap(results: pl.DataFrame, feature: str, path: Path) -> None:
    """FCR of head sites as a layer x head grid (the paper's Figure 2, left)."""
    heads = results.filter((pl.col("feature") == feature) & pl.col("head").is_not_null())
    n_layer, n_head = int(heads["layer"].max()) + 1, int(heads["head"].max()) + 1
    grid = np.full((n_layer, n_head), np.nan)
    for row in heads.iter_rows(named=True):
        grid[row["layer"], row["head"]] = row["fcr"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * n_head, 1.0 + 0.45 * n_layer))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="upper")
    for (i, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            ax.text(
                j,
                i,
                f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if v < 0.6 else "black",
            )
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_head))
    ax.set_yticks(range(n_layer))
    ax.set_title(f"FCR of '{feature}' per head")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fcr_per_layer(results: pl.DataFrame, path: Path) -> None:
    """FCR of attention-layer sites per layer, one line per feature, with 95 % intervals."""
    layers = results.filter(pl.col("head").is_null()).sort("layer")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for feature in sorted(layers["feature"].unique()):
        sub = layers.filter(pl.col("feature") == feature)
        x = sub["layer"].to_numpy()
        ax.plot(x, sub["fcr"].to_numpy(), marker="o", label=feature)
        ax.fill_between(x, sub["ci_low"].to_numpy(), sub["ci_high"].to_numpy(), alpha=0.2)
        ax.plot(x, sub["chance"].to_numpy(), linestyle=":", color=ax.lines[-1].get_color())
    ax.set_ylim(0, 1)
    ax.set_xticks(sorted(layers["layer"].unique().to_list()))
    ax.set_xlabel("layer")
    ax.set_ylabel("FCR (dotted: chance)")
    ax.set_title("FCR per attention layer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def refusal_histogram(per_site: dict[str, dict[str, float]], path: Path) -> None:
    """Histogram over sites of the refusal rate, one series per method (the paper's Figure 5)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, 1, 21)
    for method, rates in per_site.items():
        values = list(rates.values())
        ax.hist(
            values,
            bins=bins,
            alpha=0.5,
            label=f"{method} (mean {np.mean(values):.1%}, worst {np.max(values):.1%})",
        )
    ax.set_xlabel("refusal rate")
    ax.set_ylabel("sites")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title("Refusal rate over sites")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fcr_against_epsilon(curve: pl.DataFrame, path: Path) -> None:
    """FCR against the radius ε, averaged over sites, one line per feature, chance dotted (the
    paper's FCR-against-distance curve), from ``Run.fcr_curve``'s table."""
    mean = (
        curve.group_by("feature", "epsilon")
        .agg(pl.col("fcr").mean(), pl.col("chance").mean(), pl.col("refusal_rate").mean())
        .sort("feature", "epsilon")
    )
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, f in enumerate(sorted(mean["feature"].unique())):
        part = mean.filter(pl.col("feature") == f)
        color = f"C{i % 10}"
        ax.plot(part["epsilon"], part["fcr"], marker="o", color=color, label=f)
        ax.plot(part["epsilon"], part["chance"], linestyle=":", color=color)
    ax.set_xlabel("ε (cosine distance)")
    ax.set_ylabel("FCR (mean over sites)")
    ax.set_ylim(0, 1.02)
    ax.set_title("FCR against ε (dotted: chance)")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
