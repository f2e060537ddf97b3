"""Sizes of full-size runs without their weights: models built from their public configs on
PyTorch's ``meta`` device (which allocates nothing), parameters counted, peak GPU memory
estimated per stage.

Symbols: P parameters; B batch; T sequence length in tokens; L blocks; d width; a attention
heads of the model; H, d_h control heads and head size; V vocabulary; s bytes per value (4 for
float32, 2 for bfloat16). Trained models stay float32; read-only models (target) use the run's
dtype (bfloat16 on a GPU). Every estimate adds ``OVERHEAD`` (CUDA context, cuBLAS workspaces,
allocator slack).

- backbone fine-tune and controls training (float32, AdamW):
  ``4·P_all + 4·P_train (grads) + 8·P_train (AdamW's two moments) + A``,
  ``A = 4·B·T·(L·(17·d + H·d_h + 2·H + 2·a·T) + 2·d + 2·V)``: per block and token the
  stored hidden states (layer norms, q/k/v, attention output, the 4·d MLP in and out: about
  17·d), the control layer's query, weights and output, the attention probabilities (2·a·T,
  an upper bound: fused attention stores less); per token the embeddings and the logits with
  their gradient. Activations are kept through the frozen backbone too: the control layers of
  early blocks need the gradient through later ones.
- sampling: the generator in float32 plus its KV cache ``4·2·L·B·T·n_kv·d_head``, the
  per-condition control values ``4·B·L·H·d`` and last logits ``4·2·B·V``, plus the target
  that re-reads the samples in s bytes with one read batch's transient activations (below).
- extraction: the target in s bytes (the stage loads every layer, also those after the deepest
  site; the forward pass stops after it) plus one layer's transient activations at the
  extract batch, ``s·B·T·(6·d + 3·f + 2·a·T)`` with f the MLP width.
- label (a labeller model, when one is configured): its weights in s bytes, one layer's
  transient activations at the labeller batch and its logits ``4·B·T·V``, with T twice the
  target's (an instruction around the text).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from inversescope.core.architectures import architecture_of
from inversescope.core.config import BackboneConfig, ControlsConfig
from inversescope.core.methods import method_for
from inversescope.core.sites import parse_site

log = logging.getLogger(__name__)

GIB = 1024**3
OVERHEAD = 1 * GIB  # CUDA context, cuBLAS workspaces, allocator slack
GPU_BYTES = 80 * 10**9  # an 80 GB GPU (A100/H100 80GB)
SIZED_METHODS = ("inversescope", "inversionview")


def config_file(name: str, config_dir: Path) -> Path:
    """The packaged ``config.json`` copy of hub model ``name`` (``org/model`` -> org--model)."""
    return config_dir / f"{name.replace('/', '--')}.json"


def load_config(path: Path) -> PretrainedConfig:
    """A transformers config from a ``config.json`` file (no hub, no weights)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"{path}: config has no model_type")
    return AutoConfig.for_model(model_type, **data)


def packaged_config(name: str, config_dir: Path) -> PretrainedConfig:
    """The packaged config of hub model ``name``; ``ValueError`` naming the known ones."""
    path = config_file(name, config_dir)
    if not path.is_file():
        known = sorted(p.stem.replace("--", "/") for p in config_dir.glob("*.json"))
        raise ValueError(f"no packaged config for model {name!r}; packaged: {', '.join(known)}")
    return load_config(path)


def meta_model(config: PretrainedConfig) -> PreTrainedModel:
    """The full-size causal LM of ``config`` on the meta device: shapes only, no memory."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def parameter_count(model: nn.Module, trainable: bool = False) -> int:
    """Parameters (tied ones once), or only those that train."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def truncated_parameter_count(model: PreTrainedModel, deepest_layer: int) -> int:
    """Parameters of the model cut after block ``deepest_layer``: no later block, no output
    head unless it is tied to the input embeddings."""
    blocks = architecture_of(model.config).blocks(model)
    later = sum(parameter_count(b) for b in blocks[deepest_layer + 1 :])
    head = model.get_output_embeddings()
    tied = head is None or head.weight is model.get_input_embeddings().weight
    return parameter_count(model) - later - (0 if tied else parameter_count(head))


@dataclass(frozen=True)
class Shape:
    """What the activation formulas read of a model config."""

    n_layer: int
    d_model: int
    n_head: int
    n_kv: int
    d_head: int
    d_ff: int
    vocab: int

    @classmethod
    def of(cls, config: PretrainedConfig) -> Shape:
        """Read through transformers' standard attribute names (``hidden_size`` and the like
        map to GPT-2's ``n_embd``), so a labeller outside our architecture table sizes too."""
        n_head = config.num_attention_heads
        d_ff = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
        return cls(
            config.num_hidden_layers,
            config.hidden_size,
            n_head,
            getattr(config, "num_key_value_heads", None) or n_head,
            getattr(config, "head_dim", None) or config.hidden_size // n_head,
            d_ff or 4 * config.hidden_size,
            config.vocab_size,
        )


def training_bytes(
    total: int, trainable: int, shape: Shape, batch: int, seq: int, heads: int = 0, d_head: int = 0
) -> dict[str, int]:
    """Terms of the float32 AdamW training estimate (see the module docstring)."""
    per_block = 17 * shape.d_model + heads * d_head + 2 * heads + 2 * shape.n_head * seq
    per_token = shape.n_layer * per_block + 2 * shape.d_model + 2 * shape.vocab
    return {
        "weights": 4 * total,
        "grads": 4 * trainable,
        "adamw": 8 * trainable,
        "activations": 4 * batch * seq * per_token,
        "overhead": OVERHEAD,
    }


def read_bytes(shape: Shape, batch: int, seq: int, itemsize: int) -> int:
    """Transient activations of one block of a read-only forward pass."""
    return itemsize * batch * seq * (6 * shape.d_model + 3 * shape.d_ff + 2 * shape.n_head * seq)


@dataclass
class RunSizes:
    """Parameters and peak-memory estimates (bytes, per stage) of one run."""

    target_params: int
    target_truncated_params: int
    backbone_params: int
    controls_params: dict[str, int] = field(default_factory=dict)  # method -> its own params
    trainable_params: dict[str, int] = field(default_factory=dict)  # method -> what trains
    memory: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> terms

    def peak(self, stage: str) -> int:
        return sum(self.memory[stage].values())

    @property
    def stages(self) -> list[str]:
        return list(self.memory)


def _backbone_trainable(backbone_config: PretrainedConfig, cfg: BackboneConfig) -> int:
    model = meta_model(backbone_config)
    if cfg.finetune == "none":
        return 0
    if cfg.finetune == "full":
        return parameter_count(model)
    # peft deferred: only LoRA fine-tuning needs it
    from peft import LoraConfig, get_peft_model

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's notes on GPT-2's Conv1D layout: expected
        lora = get_peft_model(
            model, LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, task_type="CAUSAL_LM")
        )
    return parameter_count(lora, trainable=True)


def size_run(
    target_config: PretrainedConfig,
    backbone_config: PretrainedConfig,
    sites: list[str],
    backbone: BackboneConfig,
    controls: ControlsConfig,
    seq: int,
    read_seq: int,
    batches: dict[str, int],
    read_itemsize: int = 2,
    labeller_config: PretrainedConfig | None = None,
) -> RunSizes:
    """Sizes of a run: ``seq`` generator tokens (samples, training texts), ``read_seq`` target
    tokens (prompt plus chat template), ``batches`` of the stages (backbone, controls, sample,
    extract)."""
    target = meta_model(target_config)
    t_shape, b_shape = Shape.of(target_config), Shape.of(backbone_config)
    deepest = max(parse_site(s).layer for s in sites)
    p_target = parameter_count(target)
    p_bb = parameter_count(meta_model(backbone_config))
    sizes = RunSizes(p_target, truncated_parameter_count(target, deepest), p_bb)
    sizes.memory["backbone"] = training_bytes(
        p_bb, _backbone_trainable(backbone_config, backbone), b_shape, batches["backbone"], seq
    )
    read = {
        "target": read_itemsize * p_target,
        "activations": read_bytes(t_shape, batches["extract"], read_seq, read_itemsize),
        "overhead": OVERHEAD,
    }
    sizes.memory["extract"] = read
    for name in SIZED_METHODS:
        cfg = controls.model_copy(update={"method": name})
        bb = meta_model(backbone_config)
        with torch.device("meta"):
            model = method_for(cfg).build(bb, sites, t_shape.d_model)
        own = parameter_count(model) - parameter_count(bb)
        trainable = parameter_count(model, trainable=True)
        sizes.controls_params[name] = own
        sizes.trainable_params[name] = trainable
        g = cfg.generator
        heads = (g.n_heads, g.d_head) if name == "inversescope" else (0, 0)
        sizes.memory[f"controls[{name}]"] = training_bytes(
            parameter_count(model), trainable, b_shape, batches["controls"], seq, *heads
        )
        b = batches["sample"]
        kv = 4 * 2 * b_shape.n_layer * b * (seq + 1) * b_shape.n_kv * b_shape.d_head
        sizes.memory[f"sample[{name}]"] = {
            "generator": 4 * parameter_count(model),
            "kv_cache": kv,
            "control_values": 4
            * b
            * len(getattr(model, "blocks", ()))
            * heads[0]
            * b_shape.d_model,
            "logits": 4 * 2 * b * b_shape.vocab,
            **read,
        }
    if labeller_config is not None:
        lab, l_shape = meta_model(labeller_config), Shape.of(labeller_config)
        b = batches["label"]
        sizes.memory["label"] = {
            "labeller": read_itemsize * parameter_count(lab),
            "activations": read_bytes(l_shape, b, 2 * read_seq, read_itemsize),
            "logits": 4 * b * 2 * read_seq * l_shape.vocab,
            "overhead": OVERHEAD,
        }
    return sizes


def source_config(source, config_dir: Path) -> PretrainedConfig:
    """The transformers config of a model source (target or backbone section): the packaged
    copy of a hub model, a local directory's ``config.json``, or the sizes of one trained here."""
    if source.source == "hub":
        return packaged_config(source.name, config_dir)
    if source.source == "local":
        return load_config(Path(source.path) / "config.json")
    # transformers' GPT2Config deferred with the rest: only models trained here need it
    from transformers import GPT2Config

    a = source.arch
    return GPT2Config(
        n_layer=a.n_layer,
        n_head=a.n_head,
        n_embd=a.d_model,
        n_positions=a.n_positions,
        vocab_size=a.vocab_size,
    )


TEMPLATE_MARGIN = 32  # target tokens of a chat template and BOS around a text


def size_config(run, config_dir: Path) -> RunSizes:
    """Sizes of a run config (``inversescope.config.RunConfig``: its target, backbone,
    extract, controls and sample sections). Sequence lengths: ``sample.max_new_tokens + 1``
    generator tokens; ``TEMPLATE_MARGIN`` more for the target's reading."""
    seq = run.sample.max_new_tokens + 1
    itemsize = 2 if run.dtype in ("auto", "bfloat16", "float16") else 4
    lab = run.labeller
    if lab is None:
        lab_config = None
    elif lab.source == "target":
        lab_config = source_config(run.target, config_dir)
    else:
        lab_config = source_config(lab, config_dir)
    return size_run(
        source_config(run.target, config_dir),
        source_config(run.target if run.backbone.source == "target" else run.backbone, config_dir),
        list(run.extract.sites),
        run.backbone,
        run.controls,
        seq,
        seq + TEMPLATE_MARGIN,
        {
            "backbone": run.backbone.train.batch_size,
            "controls": run.controls.train.batch_size,
            "sample": run.sample.batch_size,
            "extract": run.extract.batch_size,
            "label": lab.batch_size if lab is not None else 0,
        },
        itemsize,
        lab_config,
    )
