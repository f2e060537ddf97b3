"""The run config: a preset, optionally a YAML file over it, and ``--set`` overrides.

Everything here is checked before any model weights load; errors are ``ConfigError`` with one
line naming the bad value and what is accepted.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from inversescope.core.config import (
    BackboneConfig,
    ControlsConfig,
    ExtractConfig,
    FcrConfig,
    KernelConfig,
    LabelConfig,
    LabellerConfig,
    PriorConfig,
    SampleConfig,
    TargetConfig,
    control_block_indices,
)
from inversescope.core.hypotheses import HypothesesConfig
from inversescope.core.sites import ModelDims, check_sites
from inversescope.tasks import (
    load_task,
    preset_names,
    preset_path,
    resolve_data_file,
    task_module_name,
)
from inversescope.tasks.features import resolve_features


class ConfigError(ValueError):
    """A user's bad input: the message is one line that names the value."""


class RunnerConfig(BaseModel):
    """Where the stages run: one process, or fanned out on a Dask cluster (extract and sample
    in shards; every other stage as one task on some worker). Changes nothing in the results,
    so it is in no cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["local", "dask"] = Field(
        "local", description="local: this process; dask: a Dask cluster, through prefect-dask."
    )
    address: str | None = Field(
        None,
        description="dask: the scheduler of an existing cluster (tcp://host:8786; a "
        "dask-jobqueue SLURMCluster's or Dask on Kubernetes'); none: a LocalCluster here.",
    )
    n_workers: int = Field(2, gt=0, description="dask without address: LocalCluster workers.")
    threads_per_worker: int = Field(
        1, gt=0, description="dask without address: threads (and torch threads) per worker."
    )
    shards: int = Field(
        16,
        gt=0,
        le=1000,
        description="Shards per fanned-out stage (extract: chunk-aligned row ranges; sample: "
        "groups of (site, block) units). Tens to hundreds: a self-hosted server struggles "
        "with thousands of task runs.",
    )

    @model_validator(mode="after")
    def _address_needs_dask(self) -> RunnerConfig:
        if self.address is not None and self.kind != "dask":
            raise ValueError(f"runner.address={self.address!r} needs runner.kind=dask")
        if self.address is not None and not self.address.startswith(("tcp://", "tls://")):
            raise ValueError(
                f"runner.address={self.address!r}: expected a scheduler address such as "
                "tcp://host:8786"
            )
        return self


class RunConfig(BaseModel):
    """Everything one pipeline run of one interpretability task needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str | None = Field(None, description="Preset this run started from.")
    task: str = Field(description="Interpretability task: ioi, icl or refusal.")
    seed: int = Field(0, description="Seed of the prior and of every training stage.")
    device: str = Field(
        "auto", description="Torch device: auto (CUDA when present), cpu, cuda, cuda:1, mps."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Compute dtype of the models only read (target, labeller): auto = bfloat16 "
        "on a GPU that supports it, float32 otherwise. Trained models stay float32.",
    )
    # sections in the order the pipeline runs (the Prefect UI shows them in this order)
    prior: PriorConfig = Field(default_factory=PriorConfig, description="Stage prior.")
    target: TargetConfig = Field(default_factory=TargetConfig, description="Stage target.")
    extract: ExtractConfig = Field(description="Stage extract.")
    backbone: BackboneConfig = Field(default_factory=BackboneConfig, description="Stage backbone.")
    kernel: KernelConfig = Field(
        default_factory=KernelConfig, description="Neighbourhoods (controls noise, sample, fcr)."
    )
    controls: ControlsConfig = Field(
        default_factory=ControlsConfig, description="Stage controls: the sampling method."
    )
    sample: SampleConfig = Field(default_factory=SampleConfig, description="Stage sample.")
    features: dict[str, str] = Field(
        default_factory=dict,
        description="Your feature functions: {name: 'package.module:function' or "
        "'/path/to/file.py:function'}, beside the task's built-in ones.",
    )
    labeller: LabellerConfig | None = Field(
        None,
        description="The causal LM behind labeller-backed features (refusal: reason, method); "
        "none: those features are not computed.",
    )
    label: LabelConfig = Field(default_factory=LabelConfig, description="Stage label.")
    fcr: FcrConfig = Field(default_factory=FcrConfig, description="Stage fcr.")
    hypotheses: HypothesesConfig = Field(
        default_factory=HypothesesConfig, description="Stage hypotheses."
    )
    runner: RunnerConfig = Field(
        default_factory=RunnerConfig, description="Where stages run: here, or on Dask."
    )

    @property
    def sample_sites(self) -> list[str]:
        """Sites sampled: ``sample.sites`` or every extracted site."""
        return self.sample.sites if self.sample.sites is not None else list(self.extract.sites)

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(
                f"device={v!r} is not a torch device; accepted: auto, cpu, cuda, cuda:N, mps"
            )
        return v

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        task_module_name(v)  # raises ValueError naming the task and the accepted ones
        return v


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the YAML as UTF-8") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of config sections, got {type(data).__name__}"
        )
    return data


def _apply_set(data: dict[str, Any], assignment: str) -> dict[str, Any]:
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected section.field=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {assignment!r}: value is not valid YAML") from e
    nested: Any = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return _deep_merge(data, nested)


def _one_line(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "config"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}")
    return "invalid config: " + "; ".join(parts)


def load_run_config(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A preset name, or a YAML file that may name a ``preset`` and override any field."""
    if spec in preset_names():
        data = _read_yaml(preset_path(spec))
        data["preset"] = spec
    elif spec.endswith((".yaml", ".yml")) or "/" in spec:
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"config file {spec!r} does not exist")
        data = _read_yaml(path)
        base = data.get("preset")
        if base is not None:
            try:
                base_data = _read_yaml(preset_path(str(base)))
            except ValueError as e:
                raise ConfigError(f"{spec}: {e}") from e
            data = _deep_merge(base_data, data)
    else:
        raise ConfigError(
            f"unknown preset {spec!r}; accepted: {', '.join(preset_names())} or a YAML file path"
        )
    for assignment in overrides:
        data = _apply_set(data, assignment)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_one_line(e)) from e


def target_dims(run: RunConfig) -> ModelDims:
    """The target's shape from its config alone (no weights): sizes, a local or hub config."""
    target = run.target
    if target.source == "train":
        a = target.arch
        return ModelDims("gpt2", a.n_layer, a.n_head, a.d_model)
    # transformers deferred: a target trained here needs none of it
    from transformers import AutoConfig

    from inversescope.core.architectures import dims_of

    if target.source == "local":
        assert target.path is not None
        if not (target.path / "config.json").is_file():
            raise ConfigError(f"target.path {str(target.path)!r} has no config.json (missing file)")
        hf_config = AutoConfig.from_pretrained(target.path)
    else:
        from importlib import resources

        from inversescope.core.models import HUB_SHAPES  # imports torch: deferred too
        from inversescope.core.sizing import config_file, load_config

        packaged = config_file(
            target.name, Path(str(resources.files("inversescope.tasks") / "model_configs"))
        )
        try:  # a local copy first, then the packaged config or known shape, then the hub itself
            hf_config = AutoConfig.from_pretrained(
                target.name, revision=target.revision, local_files_only=True
            )
        except OSError:
            if packaged.is_file():
                return dims_of(load_config(packaged))
            if target.name in HUB_SHAPES:
                return HUB_SHAPES[target.name]
            try:
                hf_config = AutoConfig.from_pretrained(target.name, revision=target.revision)
            except OSError as e:
                raise ConfigError(
                    f"target.name {target.name!r} (revision {target.revision!r}) cannot be "
                    f"resolved: {str(e).splitlines()[0]}"
                ) from e
    try:
        return dims_of(hf_config)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def check_device(device: str) -> None:
    """The requested device exists on this machine (``auto`` always does)."""
    if device.startswith("cuda"):
        import torch  # deferred: only a run that names CUDA pays for the import here

        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={device!r} but this machine has no CUDA device; accepted: auto, cpu"
            )
        index = int(device.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"device={device!r}: this machine has CUDA devices 0..{count - 1}")


PROBE_INPUTS = 8


def probe_features(run: RunConfig, specs: dict | None = None) -> None:
    """Call each of the user's features on a few prompts of the task's prior, before any stage
    runs: one that fails on more than ``label.max_error_share`` of them (it raises, or returns
    no label) fails the run now, not after hours of training. Samples are stranger than
    prompts, so the label stage still checks every input."""
    from inversescope.tasks import PriorOptions
    from inversescope.tasks.features import apply_feature, first_failure

    if specs is None:
        specs = resolve_features(run.task, run.features, has_labeller=run.labeller is not None)
    user = [spec for name, spec in sorted(specs.items()) if name in run.features]
    if not user:
        return
    files = tuple(resolve_data_file(f) for f in run.prior.files)
    try:
        _, test = load_task(run.task).generate_prior(
            0, PROBE_INPUTS, run.seed, PriorOptions(files=files, max_tokens=run.prior.max_tokens)
        )
    except ValueError:  # too few prompts: the prior stage says so with its own message
        return
    texts = [r["text"] for r in test]
    for spec in user:
        _, errors, first = apply_feature(spec.load(), texts)
        if first is not None and errors / len(texts) > run.label.max_error_share:
            raise ConfigError(
                f"feature {spec.name!r} ({spec.entry}) failed on {errors} of {len(texts)} prompts "
                f"of the prior; {first_failure(first)}"
            )


POSITION_PROBE = 64


def check_positions(run: RunConfig) -> None:
    """A model trained here must hold its longest training text: at least one token per word,
    plus the two end-of-text tokens around it, on a few prompts of the prior. (A bound from
    below: the target stage still checks the exact length once its tokenizer exists.)"""
    from inversescope.tasks import PriorOptions

    sections = [(n, m) for n, m in (("target", run.target), ("backbone", run.backbone))
                if m.source == "train"]  # fmt: skip
    if not sections:
        return
    files = tuple(resolve_data_file(f) for f in run.prior.files)
    try:
        train, _ = load_task(run.task).generate_prior(
            POSITION_PROBE, 1, run.seed, PriorOptions(files=files, max_tokens=run.prior.max_tokens)
        )
    except ValueError:  # too few prompts: the prior stage says so with its own message
        return
    words = max(len((r["text"] + r.get("answer", "")).split()) for r in train) + 2
    for name, model in sections:
        if model.arch.n_positions < words:
            raise ConfigError(
                f"{name}.arch.n_positions={model.arch.n_positions} is shorter than the prior's "
                f"prompts (at least {words} tokens); raise it"
            )


def check_run(run: RunConfig, probe: bool = True) -> None:
    """The run-level checks, in one place: those that need more than one section, the target's
    shape (no weights) or the files a run names: every site exists in the target, data files
    fit the task, features load, and (``probe``) the user's features work on a few prompts of
    the prior. ``ConfigError`` names the bad value."""
    check_device(run.device)
    dims = target_dims(run)
    try:
        check_sites(run.extract.sites, dims)
    except ValueError as e:
        raise ConfigError(f"extract.sites: {e}") from e
    try:
        files = [resolve_data_file(f) for f in run.prior.files]
        check_files = getattr(load_task(run.task), "check_files", None)
        if check_files is not None:
            check_files(files, run.prior.n_train + run.prior.n_test)
        elif files:
            raise ValueError(f"task {run.task} takes no prior.files, got {run.prior.files}")
        specs = resolve_features(run.task, run.features, has_labeller=run.labeller is not None)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    check_positions(run)
    if probe:
        probe_features(run, specs)
    unknown = sorted(set(run.fcr.references) - set(specs))
    if unknown:
        raise ConfigError(
            f"fcr.references names features {unknown} this run does not compute; accepted: "
            f"{', '.join(sorted(specs))}"
        )
    lab = run.labeller
    if lab is not None and lab.source == "local" and not (lab.path / "config.json").is_file():
        raise ConfigError(f"labeller.path {str(lab.path)!r} has no config.json (missing file)")
    missing = sorted(set(run.sample_sites) - set(run.extract.sites))
    if missing:
        raise ConfigError(
            f"sample.sites {missing} are not extracted; accepted: {', '.join(run.extract.sites)}"
        )
    if run.sample.n_examples > run.prior.n_test:
        raise ConfigError(
            f"sample.n_examples={run.sample.n_examples} exceeds prior.n_test={run.prior.n_test}"
        )
    for path, what in ((run.backbone.path, "backbone.path"),):
        if path is not None and not (path / "config.json").is_file():
            raise ConfigError(f"{what} {str(path)!r} has no config.json (missing file)")
    if run.target.source == "train" and run.prior.n_train < 2 * run.target.train.batch_size:
        raise ConfigError(
            f"prior.n_train={run.prior.n_train} is too small to train the target; "
            f"at least 2 * target.train.batch_size = {2 * run.target.train.batch_size}"
        )
    backbone = run.target if run.backbone.source == "target" else run.backbone
    if backbone.source == "train":  # a hub backbone's depth is known once it loads
        try:
            control_block_indices(run.controls.generator.control_blocks, backbone.arch.n_layer)
        except ValueError as e:
            raise ConfigError(f"controls.generator.{e}") from None
    n_target = run.target.train_prompts
    # more than the prior holds means all of it (checked just above)
    if run.target.source == "train" and n_target and n_target < 2 * run.target.train.batch_size:
        raise ConfigError(
            f"target.train_prompts={n_target} is too few to train the target; at least "
            f"2 * target.train.batch_size = {2 * run.target.train.batch_size}"
        )
