"""One pydantic model per stage. Building a config does no I/O; bad values raise ``ValueError``
(pydantic wraps it in ``ValidationError``, itself a ``ValueError``) naming the value."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inversescope.core.sites import parse_site


def site_list(field: str, sites: list[str]) -> list[str]:
    """Canonical site names: at least one, each once."""
    if not sites:
        raise ValueError(f"{field} is empty; name at least one site such as L0H0")
    names = [parse_site(s).name for s in sites]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{field} names {dup} more than once; name each site once")
    return names


class StageConfig(BaseModel):
    """Base of every stage config: unknown fields are an error, not silently ignored, and a
    field's old name (``RENAMED``: old -> new) is an error that names the new one."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    RENAMED: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _renamed_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in cls.RENAMED.items():
                if old in data:
                    raise ValueError(f"{old!r} is now called {new!r}; rename it in your config")
        return data


class PriorConfig(StageConfig):
    """The task's prompt prior: how many prompts of each split, and the task's data files."""

    n_train: int = Field(10_000, gt=0, description="Number of training prompts.")
    n_test: int = Field(500, gt=0, description="Number of held-out test prompts.")
    files: list[str] = Field(
        default_factory=list,
        description="Task data files: a path, or data:NAME for a file shipped with the package. "
        "icl: one word-list CSV (columns english,french,italian,spanish; default the shipped "
        "list); refusal: query files, CSV or JSONL with text, harmful and optional source.",
    )
    max_tokens: int = Field(
        60,
        gt=0,
        description="refusal: drop queries longer than this many tokens of the target's "
        "tokenizer (a target trained here is bounded by its n_positions instead).",
    )


class TinyModelConfig(StageConfig):
    """Sizes of a small GPT-2-architecture model built from `GPT2Config`."""

    # bounded: a small model trained here on CPU; a hub or local model has no such bound
    n_layer: int = Field(4, gt=0, le=48, description="Transformer blocks.")
    n_head: int = Field(4, gt=0, le=64, description="Attention heads per block.")
    d_model: int = Field(128, gt=0, le=4096, description="Residual stream width.")
    n_positions: int = Field(64, gt=0, le=4096, description="Longest sequence in tokens.")
    vocab_size: int = Field(
        1024, ge=300, le=65536, description="BPE vocabulary size of the local tokenizer."
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TinyModelConfig:
        if self.d_model % self.n_head:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_head={self.n_head}; "
                "choose sizes with d_model % n_head == 0"
            )
        return self


class TrainConfig(StageConfig):
    """An optimisation schedule (AdamW with linear warm-up, then constant or cosine decay)."""

    steps: int = Field(1500, gt=0, description="Optimiser steps at most.")
    batch_size: int = Field(64, gt=0, description="Sequences per step.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    warmup: int = Field(100, ge=0, description="Linear warm-up steps.")
    decay: Literal["constant", "cosine"] = Field(
        "constant",
        description="After warm-up: constant, or cosine decay to min_lr_ratio of the peak at "
        "the last step.",
    )
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="Final learning rate / peak (decay: cosine)."
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    eval_every: int = Field(250, gt=0, description="Steps between evaluations.")
    precision: Literal["float32", "bfloat16", "auto"] = Field(
        "float32",
        description="The training step's matrix products: float32; bfloat16 under autocast "
        "(weights, gradients and optimiser state stay float32); auto: bfloat16 where the "
        "device multiplies it natively (a CUDA device that supports it, a CPU with AMX), "
        "float32 elsewhere. The manifest records which one ran; a resumed run keeps its own.",
    )
    checkpoint_every: int = Field(
        100,
        ge=0,
        description="Steps between resumable checkpoints (model, optimiser, schedule, random "
        "and data-order state) in the partial directory; a rerun of a killed stage continues "
        "from the last one. 0: none. Changes no result, so it is in no cache key.",
    )

    def key(self) -> dict[str, Any]:
        """What of the schedule a trained model depends on (not how often it is saved)."""
        out = self.model_dump(mode="json", exclude={"checkpoint_every"})
        if self.decay == "constant":  # as before the option existed: those keys stay valid
            out.pop("decay"), out.pop("min_lr_ratio")
        if self.precision == "float32":  # likewise
            out.pop("precision")
        return out

    def lr_factor(self, step: int) -> float:
        """Learning rate / peak after ``step`` optimiser steps (0-based, as LambdaLR counts)."""
        warm = max(self.warmup, 1)
        if step + 1 < warm or self.decay == "constant":
            return min(1.0, (step + 1) / warm)
        span = max(self.steps - warm, 1)
        done = min(max(step + 1 - warm, 0) / span, 1.0)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * done))


class ModelSourceConfig(StageConfig):
    """Where a model comes from: trained here, a hub name, or a local directory. ``load`` is the
    one place that reads a hub or local model (target, backbone and labeller alike)."""

    section: ClassVar[str] = "model"
    source: Literal["train", "hub", "local"] = Field(
        "train",
        description="train: a small model trained here; hub: a model name; "
        "local: a directory saved with save_pretrained.",
    )
    name: str | None = Field(None, description="Hub model name (source=hub), e.g. gpt2.")
    revision: str = Field("main", description="Hub revision (source=hub).")
    path: Path | None = Field(None, description="Model directory (source=local).")

    @model_validator(mode="after")
    def _source_fields(self) -> ModelSourceConfig:
        if self.source == "hub" and not self.name:
            raise ValueError(
                f"{self.section}.source=hub needs {self.section}.name (a model name such as gpt2)"
            )
        if self.source == "local" and self.path is None:
            raise ValueError(
                f"{self.section}.source=local needs {self.section}.path "
                "(a save_pretrained directory)"
            )
        return self

    @property
    def location(self) -> tuple[str, str | None]:
        """(hub name or directory, hub revision or None) of a hub or local model."""
        if self.source == "hub":
            assert self.name is not None
            return self.name, self.revision
        if self.source == "local":
            assert self.path is not None
            return str(self.path), None
        raise ValueError(f"{self.section}.source={self.source} names no model to load")

    def load(self, device: str = "cpu", dtype=None):
        """(model in eval mode, tokenizer) of a hub or local model (``dtype`` default float32)."""
        # transformers import deferred: building a config must stay cheap and free of I/O
        from inversescope.core.models import load_model, load_tokenizer

        where, revision = self.location
        return load_model(where, revision, device, dtype), load_tokenizer(where, revision)


class TrainableModelConfig(ModelSourceConfig):
    """A model source that may also be a small model trained here (``source: train``)."""

    arch: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Sizes (train).")


class TargetConfig(TrainableModelConfig):
    """The model whose activations are interpreted (``train``: trained here on the prior)."""

    section: ClassVar[str] = "target"
    train: TrainConfig = Field(default_factory=TrainConfig, description="Schedule (train).")
    stop_accuracy: float = Field(
        0.99, gt=0, le=1, description="Stop training early once validation accuracy reaches it."
    )
    min_accuracy: float = Field(
        0.9, ge=0, le=1, description="Fail the stage if test accuracy ends below this."
    )
    train_prompts: int | None = Field(
        None,
        gt=0,
        description="Train on at most the first this many prompts of the prior's train split "
        "(None: all). The prior feeds the generators too, which need far more prompts than the "
        "target needs to learn its task; trained on the first N prompts of a larger prior of "
        "the same seed (and query files), the target equals the one a prior of N prompts "
        "gives.",
    )


class ExtractConfig(StageConfig):
    """Which sites to read, where, and how to store them."""

    sites: list[str] = Field(description="Site names: L{l}H{h} (head output) or L{l}.attn.")
    position: Literal["last"] = Field("last", description="Token position read: last prompt token.")
    batch_size: int = Field(64, gt=0, description="Prompts per forward pass.")
    chunk_rows: int = Field(2048, gt=0, description="Rows per Zarr chunk (the unit of resume).")
    dtype: Literal["float32", "float16"] = Field("float32", description="Stored dtype.")

    @field_validator("sites")
    @classmethod
    def _canonical_sites(cls, sites: list[str]) -> list[str]:
        return site_list("extract.sites", sites)


class KernelConfig(StageConfig):
    """The neighbourhood of a reference activation: distance, kernel and radius."""

    RENAMED: ClassVar[dict[str, str]] = {"kernel": "shape"}

    distance: Literal["cosine"] = Field("cosine", description="Distance between activations.")
    shape: Literal["gaussian", "hard"] = Field(
        "gaussian",
        description="The kernel k(d) of P(x; z_hat): gaussian exp(-d^2 / 2 eps^2), or hard "
        "1{d < eps}. Read by the exact kernel training noise (noise.family: kernel).",
    )
    epsilon: float = Field(
        0.1,
        description="Kernel radius ε, in (0, 2): cosine distance lies in [0, 2]. A sample is "
        "accepted when its distance to z_hat is below it.",
    )
    delta: float = Field(
        0.1, description="Allowed relative norm change δ, in (0, 1) (exact kernel noise)."
    )

    def key(self) -> dict[str, Any]:
        """What the exact kernel noise reads of the kernel (its cache-key part)."""
        return {"distance": self.distance, "shape": self.shape, "epsilon": self.epsilon,
                "delta": self.delta}  # fmt: skip

    @field_validator("epsilon")
    @classmethod
    def _positive_epsilon(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"epsilon={v} must be > 0; accepted: 0 < epsilon < 2")
        if not v < 2:
            raise ValueError(
                f"epsilon={v}: cosine distance lies in [0, 2], so this radius accepts every "
                "sample; accepted: 0 < epsilon < 2"
            )
        return v

    @field_validator("delta")
    @classmethod
    def _delta_in_unit_interval(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError(f"delta={v} must lie in (0, 1)")
        return v


class BackboneConfig(TrainableModelConfig):
    """The generator's decoder-only LM, fine-tuned on the prior's prompts, then frozen
    (``train``: a small model trained from scratch here with the target's tokenizer; ``target``:
    the target's own weights and tokenizer, as in the paper's IOI setup where GPT-2 small is
    both; the paper's is the hub's gpt2)."""

    section: ClassVar[str] = "backbone"
    source: Literal["train", "hub", "local", "target"] = Field(  # type: ignore[assignment]
        "train",
        description="train: a small model trained here from scratch; hub: a model name; local: "
        "a directory saved with save_pretrained; target: the target's weights and tokenizer "
        "(whatever the target's source).",
    )
    finetune: Literal["full", "lora", "none"] = Field(
        "full",
        description="Full fine-tune, LoRA (peft), or none: the backbone as it loads (with "
        "controls.generator.backbone_mode full, the controls stage trains every weight anyway).",
    )
    lora_rank: int = Field(8, gt=0, description="LoRA rank (finetune=lora).")
    train: TrainConfig = Field(
        default_factory=TrainConfig, description="Fine-tuning schedule (not finetune=none)."
    )

    @model_validator(mode="after")
    def _lora_needs_pretrained(self) -> BackboneConfig:
        if self.source == "train" and self.finetune == "lora":
            raise ValueError(
                "backbone.finetune=lora needs a pretrained backbone (source hub/local/target)"
            )
        if self.source == "train" and self.finetune == "none":
            raise ValueError(
                "backbone.finetune=none with backbone.source=train would sample from random "
                "weights; train it (finetune full) or start from a model (source target/hub/local)"
            )
        return self

    @property
    def trains(self) -> bool:
        return self.finetune != "none"


class NoiseConfig(StageConfig):
    """Training noise r of the pairs (x_hat, z_hat + r); see inversescope.core.noise."""

    family: Literal["kernel", "gaussian", "none"] = Field(
        "gaussian",
        description="kernel: exact kernel noise (reads the kernel section); gaussian: "
        "isotropic, of the given scale; none.",
    )
    scale: float = Field(0.1, ge=0, description="gaussian: ||r|| / ||z_hat|| on average.")

    def key(self, kernel: KernelConfig) -> dict[str, Any]:
        """What the noise reads: the family, and the scale or the kernel it draws from."""
        if self.family == "gaussian":
            return {"family": "gaussian", "scale": self.scale}
        if self.family == "kernel":
            return {"family": "kernel", "kernel": kernel.key()}
        return {"family": "none"}


def control_block_indices(control_blocks: list[int] | None, n_blocks: int) -> list[int]:
    """The backbone blocks that get a control layer, ascending (negative indices count from the
    end; None: every block). ``ValueError`` names a block that does not exist or is repeated."""
    if control_blocks is None:
        return list(range(n_blocks))
    bad = [b for b in control_blocks if not -n_blocks <= b < n_blocks]
    if bad:
        raise ValueError(
            f"control_blocks={control_blocks}: block {bad[0]} is not in the backbone's "
            f"{n_blocks} blocks (0 to {n_blocks - 1}, or -{n_blocks} to -1)"
        )
    resolved = sorted({b % n_blocks for b in control_blocks})
    if len(resolved) != len(control_blocks):
        raise ValueError(f"control_blocks={control_blocks}: names one block twice")
    return resolved


class GeneratorConfig(StageConfig):
    """InverseScope's conditioning: site encoders + one control layer per backbone block, trained
    on (x_hat, z_hat + r) with training noise r."""

    n_heads: int = Field(32, gt=0, description="Control-layer heads (paper: 32).")
    d_head: int = Field(64, gt=0, description="Control-layer head size (paper: 64).")
    value_form: Literal["projected", "per_head"] = Field(
        "per_head",
        description="per_head: a backbone-wide value per head (zero init; measured better on "
        "ioi-tiny); projected: per-head values of size d_head, then one output projection to "
        "the backbone's width (zero init; fewer parameters).",
    )
    RENAMED: ClassVar[dict[str, str]] = {"backbone": "backbone_mode"}

    backbone_mode: Literal["frozen", "lora", "full"] = Field(
        "frozen",
        description="What of the backbone trains with the controls: frozen (the paper's "
        "letter): nothing; lora: LoRA adapters; full: every weight.",
    )
    lora_rank: int = Field(8, gt=0, description="LoRA rank (backbone_mode=lora).")
    backbone_lr_ratio: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Learning rate of the backbone's own weights (backbone_mode=full) relative "
        "to the schedule's, which the encoders and control layers get: the new weights start "
        "from zero or random, the backbone from a trained LM.",
    )
    noise: NoiseConfig = Field(default_factory=NoiseConfig, description="Training noise.")
    control_blocks: list[int] | None = Field(
        None,
        description="Backbone blocks that get a control layer (0-based; negative counts from "
        "the last); None: every block, the paper's design.",
    )
    log_norm: bool = Field(
        False,
        description="Also condition on log ||z|| (a learned per-site direction scaled by it, "
        "zero at init, added to the encoded direction); cosine acceptance ignores the norm.",
    )

    @field_validator("control_blocks")
    @classmethod
    def _blocks(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError(f"control_blocks={v}: give distinct block indices, or null for all")
        return v

    def training_key(self, kernel: KernelConfig) -> dict[str, Any]:
        """What the trained generator depends on: its fields that its build and training read
        (the training noise reads the kernel only for exact kernel noise)."""
        out = self.model_dump(mode="json", exclude={"noise", "lora_rank", "backbone_lr_ratio"})
        if self.backbone_mode == "lora":
            out["lora_rank"] = self.lora_rank
        if self.backbone_mode == "full" and self.backbone_lr_ratio != 1.0:
            out["backbone_lr_ratio"] = self.backbone_lr_ratio  # 1: as before the option existed
        out["noise"] = self.noise.key(kernel)
        return out

    def sampling_key(self, kernel: KernelConfig) -> dict[str, Any]:
        """What sampling reads beyond the trained state: nothing."""
        return {}


class InversionViewConfig(StageConfig):
    """The InversionView baseline decoder: trains without noise, samples with Gaussian noise."""

    hidden: int = Field(512, gt=0, description="Residual MLP hidden width.")
    sample_noise_scale: float | None = Field(
        None,
        ge=0,
        description="Scale of the Gaussian noise added to z_hat when sampling "
        "(||r|| / ||z_hat|| on average; default ε, InversionView's protocol).",
    )

    def training_key(self, kernel: KernelConfig) -> dict[str, Any]:
        """The decoder trains without noise: only its size."""
        return self.model_dump(mode="json", exclude={"sample_noise_scale"})

    def noise_scale(self, kernel: KernelConfig) -> float:
        """InversionView's protocol: Gaussian noise of scale ε at sampling, unless configured."""
        return kernel.epsilon if self.sample_noise_scale is None else self.sample_noise_scale

    def sampling_key(self, kernel: KernelConfig) -> dict[str, Any]:
        return {"noise_scale": self.noise_scale(kernel)}


class ControlsConfig(StageConfig):
    """What conditions the backbone on activations (the sampling method), and its training on the
    train split's activations with the backbone's next-token loss."""

    method: Literal["inversescope", "inversionview", "prior"] = Field(
        "inversescope",
        description="inversescope: site encoders + control layers; inversionview: the baseline "
        "decoder with Gaussian noise of scale ε at sampling; prior: the backbone alone.",
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1e-5, warmup=1000, steps=20_000),
        description="Schedule (paper: AdamW, lr 1e-5, 1000 warm-up steps).",
    )
    generator: GeneratorConfig = Field(
        default_factory=GeneratorConfig, description="method=inversescope: the generator."
    )
    inversionview: InversionViewConfig = Field(
        default_factory=InversionViewConfig, description="method=inversionview: the baseline."
    )
    sites_per_row: int | None = Field(
        None,
        ge=1,
        description="Training pairs: each visit to a row chunk pairs every row with this many "
        "sites drawn at random (null, or at least as many as the run trains on: with every "
        "site). Fewer sites per row meet more distinct prompts in the same number of steps.",
    )

    length_groups: int | None = Field(
        None,
        ge=1,
        description="Training batches: sort each run of this many batches by prompt length, so "
        "that a batch pads little (null: batches of random lengths).",
    )

    def pairs_key(self) -> dict[str, Any]:
        """How training pairs are drawn (empty for the defaults: keys as before the options)."""
        fields = {"sites_per_row": self.sites_per_row, "length_groups": self.length_groups}
        return {k: v for k, v in fields.items() if v is not None}

    @property
    def method_config(self) -> GeneratorConfig | InversionViewConfig | None:
        """The section of the chosen method (prior: none, nothing trains)."""
        return {"inversescope": self.generator, "inversionview": self.inversionview}.get(
            self.method
        )

    def training_key(self, kernel: KernelConfig) -> dict[str, Any]:
        """What the trained state depends on besides seed, sites and schedule."""
        cfg = self.method_config
        return {} if cfg is None else cfg.training_key(kernel)

    def sampling_key(self, kernel: KernelConfig) -> dict[str, Any]:
        """What sampling reads beyond the sample section and the trained state."""
        cfg = self.method_config
        return {} if cfg is None else cfg.sampling_key(kernel)


class LabellerConfig(ModelSourceConfig):
    """The causal LM behind labeller-backed features (refusal's harmfulness of unseen queries,
    reason and method): it picks a label by comparing candidates' log-likelihoods."""

    section: ClassVar[str] = "labeller"
    source: Literal["hub", "local", "target"] = Field(  # type: ignore[assignment]
        "hub",
        description="hub: a model name; local: a save_pretrained directory; target: the "
        "pipeline's own target model (for smoke tests of small presets: its labels carry no "
        "meaning).",
    )
    batch_size: int = Field(16, gt=0, description="(input, candidate) pairs per forward pass.")


class SampleConfig(StageConfig):
    """Sampling inputs conditioned on test activations, and measuring them against z_hat (with
    the method the controls stage trained)."""

    sites: list[str] | None = Field(None, description="Sites to sample (default: all extracted).")
    n_examples: int = Field(20, gt=0, description="First n test prompts used as references.")
    samples_per_example: int = Field(16, gt=0, description="Samples per (reference, site).")
    RENAMED: ClassVar[dict[str, str]] = {"block_examples": "group_size"}

    group_size: int = Field(
        32,
        gt=0,
        description="References per sampling group: each (site, group) unit has its own random "
        "stream and output part, the unit of resumption and of fan-out.",
    )
    batch_size: int = Field(256, gt=0, description="Sequences generated at once.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    max_new_tokens: int = Field(40, gt=0, description="Longest sample in backbone tokens.")

    @field_validator("sites")
    @classmethod
    def _canonical_sites(cls, sites: list[str] | None) -> list[str] | None:
        return None if sites is None else site_list("sample.sites", sites)


class LabelConfig(StageConfig):
    """Applying feature functions to samples and reference prompts."""

    max_error_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Fail when a feature raises on more than this share of inputs.",
    )


class FcrConfig(StageConfig):
    """Feature consistency rate per (site, feature)."""

    RENAMED: ClassVar[dict[str, str]] = {"kernel": "weighting"}

    weighting: Literal["hard", "gaussian"] = Field(
        "hard",
        description="How samples count in FCR: hard: accepted samples only (distance < ε), "
        "weight 1; gaussian: every sample, weighted exp(-d^2 / 2 ε^2).",
    )
    n_bootstrap: int = Field(1000, gt=0, description="Bootstrap resamples over examples.")
    ci_level: float = Field(0.95, gt=0, lt=1, description="Confidence level of the interval.")
    references: dict[str, str] = Field(
        default_factory=dict,
        description="Restrict the references FCR averages over to those whose label of each "
        "named feature has the given value, e.g. {harmfulness: harmful} (the paper's safety "
        "task); refusal rates still cover every reference.",
    )

    @field_validator("references")
    @classmethod
    def _named_features(cls, v: dict[str, str]) -> dict[str, str]:
        bad = {k: x for k, x in v.items() if not k or not isinstance(x, str) or not x}
        if bad:
            raise ValueError(f"fcr.references {bad} needs a feature name and a non-empty label")
        return v
