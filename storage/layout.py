"""Every file name inside the artifacts, and every reader and writer of them, in one place.

Stages and queries go through this module: a stage never rebuilds another stage's paths or
imports another stage to read its output.

```
prior/<key>/      train.parquet, test.parquet
target/<key>/     target.json (where the model comes from), model/, tokenizer/ (trained here)
extract/<key>/    activations.zarr (see storage.activations)
backbone/<key>/   model/, tokenizer/
controls/<key>/   controls.pt (self-describing checkpoint), controls.json (its config)
sample/<key>/     samples/<site>/<group>.parquet, listed in the manifest's metrics.parts
label/<key>/      labels.parquet, reference.parquet
label/features/   per-feature label cache;  label/labeller.sqlite: the labeller's memo
fcr/<key>/        results.parquet and plots
hypotheses/<key>/ hypotheses.parquet
```

Every function takes a local directory or a bucket prefix (``storage.files``); in a bucket an
artifact's files lie under its build (``storage.artifacts``), which ``Artifact.path`` names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from inversescope.core.config import TargetConfig
from inversescope.core.sites import parse_site
from inversescope.core.threads import TORCH_STATE
from inversescope.storage.artifacts import MANIFEST, Artifact, write_json_atomic
from inversescope.storage.files import (
    Where,
    is_remote,
    local_dir,
    location,
    machine_local,
    source,
    writing,
    writing_dir,
)
from inversescope.storage.tables import read_parquet, scan_parquet, write_parquet_atomic

__all__ = ["writing"]  # plots and other files written by libraries: `with writing(path) as p`

SPLITS: tuple[str, ...] = ("train", "test")
TARGET_RECORD = "target.json"
MODEL_DIR = "model"
TOKENIZER_DIR = "tokenizer"
CONTROLS_CHECKPOINT = "controls.pt"
CONTROLS_CONFIG = "controls.json"
SAMPLES_DIR = "samples"
LABELS = "labels.parquet"
REFERENCE = "reference.parquet"
RESULTS = "results.parquet"
HYPOTHESES = "hypotheses.parquet"
FEATURE_CACHE = "features"
LABELLER_CACHE = "labeller.sqlite"
TRAIN_CHECKPOINT = "train-state.pt"


def _root(artifact: Artifact | Where) -> Where:
    if isinstance(artifact, Artifact):
        return artifact.path
    return artifact if is_remote(artifact) else Path(artifact)


# --- prior --------------------------------------------------------------------------------
def write_split(out: Where, split: str, df: pl.DataFrame) -> None:
    write_parquet_atomic(df, out / f"{split}.parquet")


def read_split(prior: Artifact | Where, split: str) -> pl.DataFrame:
    """One split of the prompt prior (id, text, the task's columns)."""
    return read_parquet(_root(prior) / f"{split}.parquet")


# --- models: target and backbone ----------------------------------------------------------
class BucketCheckpoint:
    """A training checkpoint kept in a bucket (``core.lm_training``'s checkpoint interface):
    one object, put whole, so a kill mid-save leaves the previous one."""

    def __init__(self, path: Where):
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> dict[str, Any]:
        import io

        import torch  # deferred: only training stages checkpoint

        # our own object in our own build: it holds numpy and Python generator states
        data = io.BytesIO(self.path.read_bytes())
        return torch.load(data, map_location="cpu", weights_only=False)

    def save(self, state: dict[str, Any]) -> None:
        import io

        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        self.path.write_bytes(buf.getvalue())


def train_checkpoint(out: Where):
    """The resumable training state of a training stage (target, backbone, controls), kept in
    its partial directory (or build) while it trains and removed before the commit: a local
    path, or a ``BucketCheckpoint``."""
    path = out / TRAIN_CHECKPOINT
    return BucketCheckpoint(path) if is_remote(path) else path


def drop_train_checkpoint(out: Where) -> None:
    (out / TRAIN_CHECKPOINT).unlink(missing_ok=True)


def save_model(out: Where, model, tokenizer) -> None:
    with writing_dir(out / MODEL_DIR) as model_dir:
        model.save_pretrained(model_dir)
    with writing_dir(out / TOKENIZER_DIR) as tokenizer_dir:
        tokenizer.save_pretrained(tokenizer_dir)


def load_saved_model(root: Where, device: str = "cpu", dtype=None):
    """(model, tokenizer) saved by ``save_model`` under ``root``."""
    # transformers deferred: readers of tables must not pay for it
    from inversescope.core.models import load_model, load_tokenizer

    return (
        load_model(local_dir(root / MODEL_DIR), device=device, dtype=dtype),
        load_tokenizer(local_dir(root / TOKENIZER_DIR)),
    )


def load_saved_tokenizer(root: Artifact | Where):
    from inversescope.core.models import load_tokenizer  # transformers: deferred as above

    return load_tokenizer(local_dir(_root(root) / TOKENIZER_DIR))


def write_target_record(out: Where, record: dict[str, Any]) -> None:
    """Where the target's weights live (``source``: train, hub or local) and the prefix it was
    trained to read texts after."""
    write_json_atomic(out / TARGET_RECORD, record)


def target_record(target: Artifact) -> dict[str, Any]:
    return json.loads((target.path / TARGET_RECORD).read_text(encoding="utf-8"))


def target_prefix(target: Artifact) -> str:
    """What the target reads before every text (a target trained here: ``<eos>``)."""
    return target_record(target).get("prefix") or ""


def load_target(target: Artifact, device: str = "cpu", dtype=None):
    """(model, tokenizer) of a target artifact, wherever the weights live (``dtype``: a torch
    dtype, default float32)."""
    record = target_record(target)
    if record["source"] == "train":
        return load_saved_model(target.path, device, dtype)
    source = TargetConfig(
        source=record["source"],
        name=record["name"],
        revision=record["revision"] or "main",
        path=record["path"],
    )
    return source.load(device, dtype)


def load_target_tokenizer(target: Artifact):
    """The target's tokenizer alone (no weights), wherever it lives."""
    record = target_record(target)
    if record["source"] == "train":
        return load_saved_tokenizer(target)
    from inversescope.core.models import load_tokenizer  # transformers: deferred as above

    if record["source"] == "local":
        return load_tokenizer(record["path"])
    return load_tokenizer(record["name"], record["revision"])


def target_model_config(target: Artifact):
    """The target's transformers config, without its weights."""
    from transformers import AutoConfig  # deferred with the other model readers

    record = target_record(target)
    if record["source"] == "train":
        return AutoConfig.from_pretrained(local_dir(target.path / MODEL_DIR))
    if record["source"] == "local":
        return AutoConfig.from_pretrained(record["path"])
    return AutoConfig.from_pretrained(record["name"], revision=record["revision"])


def target_name(target: Artifact) -> str:
    """What the target is, without paths: a hub name, or the key of a target trained here."""
    record = target_record(target)
    if record["source"] == "train":
        return f"trained:{target.key}"
    if record["source"] == "local":
        return f"local:{Path(record['path']).name}"
    return f"{record['name']}@{record['revision']}"


def load_backbone(backbone: Artifact, device: str = "cpu"):
    """(fine-tuned backbone, its tokenizer)."""
    return load_saved_model(backbone.path, device)


# --- controls -----------------------------------------------------------------------------
def save_controls(out: Where, ckpt: dict[str, Any]) -> None:
    """A self-describing checkpoint (``core.methods.checkpoint``) and its config as JSON."""
    import torch  # deferred: only checkpoints need it

    with writing(out / CONTROLS_CHECKPOINT) as path:
        torch.save(ckpt, path)
    write_json_atomic(out / CONTROLS_CONFIG, {k: v for k, v in ckpt.items() if k != "state"})


def load_controls(controls: Artifact, backbone):
    """(sampling method, its model on ``backbone``) from the checkpoint alone."""
    import torch  # deferred with the methods: table readers must not import torch

    from inversescope.core.methods import from_checkpoint

    ckpt = torch.load(
        source(controls.path / CONTROLS_CHECKPOINT), map_location="cpu", weights_only=True
    )
    with TORCH_STATE:  # builds modules (torch.nn.init): not beside a model load elsewhere
        return from_checkpoint(ckpt, backbone)


# --- samples ------------------------------------------------------------------------------
def sample_part_name(site: str, group: int) -> str:
    """The path, relative to its artifact, of the Parquet part holding one (site, group) unit's
    samples, as the manifest lists it."""
    return f"{SAMPLES_DIR}/{site}/{group:05d}.parquet"


def sample_part(out: Where, site: str, group: int) -> Where:
    return out / sample_part_name(site, group)


def write_sample_part(out: Where, site: str, group: int, df: pl.DataFrame) -> None:
    part = sample_part(out, site, group)
    part.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(df, part)


def scan_sample_parts(root: Where, parts: list[str]) -> pl.LazyFrame:
    return scan_parquet([root / p for p in parts])


def read_sample_parts(root: Where, parts: list[str]) -> pl.DataFrame:
    return scan_sample_parts(root, parts).collect()


def sample_parts(sample: Artifact | Where) -> list[str]:
    """The parts a committed sample artifact's manifest lists (never a glob: a stray file is
    not a sample)."""
    if isinstance(sample, Artifact):
        manifest = sample.manifest
    else:
        manifest = json.loads((_root(sample) / MANIFEST).read_text(encoding="utf-8"))
    return list(manifest["metrics"]["parts"])


def read_samples(sample: Artifact | Where) -> pl.DataFrame:
    """Every sample of a committed sample artifact, from the parts its manifest lists."""
    return read_sample_parts(_root(sample), sample_parts(sample))


def scan_samples(sample: Artifact | Where) -> pl.LazyFrame:
    """Every sample (site, example_id, sample_idx, text, distance), lazily: filter before
    collecting."""
    return scan_sample_parts(_root(sample), sample_parts(sample))


# --- labels and results -------------------------------------------------------------------
def write_labels(out: Where, labels: pl.DataFrame, reference: pl.DataFrame) -> None:
    write_parquet_atomic(labels, out / LABELS)
    write_parquet_atomic(reference, out / REFERENCE)


def read_labels(label: Artifact) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(sample labels keyed by site, example_id, sample_idx; reference labels keyed by id)."""
    return read_parquet(label.path / LABELS), read_parquet(label.path / REFERENCE)


def feature_cache_dir(workdir: Where) -> Where:
    """Labels per feature, shared by every label artifact of a workdir."""
    return location(workdir) / "label" / FEATURE_CACHE


def labeller_cache_path(workdir: Where) -> Path:
    """The labeller's SQLite memo: in the workdir on disk; for a bucket workdir, on this
    machine (SQLite needs a filesystem; a lost memo costs relabelling, never a result)."""
    return machine_local(location(workdir), f"label/{LABELLER_CACHE}")


def results_path(fcr: Artifact | Where) -> Where:
    return _root(fcr) / RESULTS


def hypotheses_path(hypotheses: Artifact | Where) -> Where:
    """Every candidate feature scored on every site (one row per site and candidate)."""
    return _root(hypotheses) / HYPOTHESES


HYPOTHESES_SCHEMA = {
    "preset": pl.String,
    "task": pl.String,
    "method": pl.String,
    "run_key": pl.String,
    "site": pl.String,
    "layer": pl.Int64,
    "head": pl.Int64,
    "candidate": pl.String,
    "family": pl.String,
    "weighting": pl.String,
    "epsilon": pl.Float64,
    "fcr": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "chance": pl.Float64,
    "lift": pl.Float64,
    "normalised_lift": pl.Float64,
    "null_fcr": pl.Float64,
    "n_examples": pl.Int64,
    "n_samples": pl.Int64,
    "p_value": pl.Float64,
    "q_value": pl.Float64,
    "n_permutations": pl.Int64,
    "status": pl.String,
    "alias_of": pl.String,
    "rank": pl.Int64,
}
_UNTESTED = ("normalised_lift", "null_fcr", "p_value", "q_value")  # null where not tested


def write_hypotheses(out: Where, rows: list[dict[str, Any]]) -> pl.DataFrame:
    """``hypotheses.parquet`` from one dict per (site, candidate) (layer and head are filled in
    from the site; NaN where a pair was not tested becomes null); returns the table."""
    sites = {r["site"]: parse_site(r["site"]) for r in rows}
    rows = [{**r, "layer": sites[r["site"]].layer, "head": sites[r["site"]].head} for r in rows]
    table = pl.DataFrame(rows, schema=HYPOTHESES_SCHEMA)
    table = table.with_columns(pl.col(_UNTESTED).fill_nan(None))
    write_parquet_atomic(table, hypotheses_path(out))
    return table


def read_hypotheses(hypotheses: Artifact | Path) -> pl.DataFrame:
    return read_parquet(hypotheses_path(hypotheses))


def read_results(fcr: Artifact | Where) -> pl.DataFrame:
    """The FCR table of an fcr artifact (or of its path, as ``--json`` prints it)."""
    root = fcr if isinstance(fcr, Artifact) else location(str(fcr))
    return read_parquet(results_path(root))


def heads_plot_path(out: Where, feature: str) -> Where:
    """FCR per layer x head of one feature."""
    return out / f"fcr_heads_{feature}.png"


def layers_plot_path(out: Where) -> Where:
    """FCR per layer of every feature, with chance dotted."""
    return out / "fcr_layers.png"


def refusal_plot_path(out: Where) -> Where:
    """Refusal rate over sites."""
    return out / "refusal_hist.png"
