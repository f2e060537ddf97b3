"""Each hub preset's first stages (prior, target, extract) on its real model, in the run's dtype
(bf16 on a GPU that has it), on a few prompts and two sites. Runs only where a CUDA device and
the model hub (or a local copy of the model) exist: ``python -m pytest -m gpu``."""

import pytest
import torch

from inversescope.config import check_run, load_run_config
from inversescope.core.models import pick_dtype
from inversescope.flows.stage import run_keys, run_stage
from inversescope.storage.activations import ActivationStore
from inversescope.storage.artifacts import ArtifactStore
from inversescope.tasks import preset_names

pytestmark = pytest.mark.gpu
FIRST = ("prior", "target", "extract")
# presets whose prior is the user's own files run on the shipped benign toy file
USER_FILES = {"refusal-llama3-8b": ["prior.files=[data:refusal_toy.jsonl]"]}
HUB_PRESETS = [p for p in preset_names() if load_run_config(p).target.source == "hub"]


def reachable(name: str, revision: str) -> bool:
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, revision=revision)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("preset", HUB_PRESETS)
def test_preset_first_stages_on_gpu(preset, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    base = load_run_config(preset, USER_FILES.get(preset, []))
    if not reachable(base.target.name, base.target.revision):
        pytest.skip(f"{base.target.name} is neither on the hub nor in the local cache")
    sites = base.extract.sites[:1] + base.extract.sites[-1:]
    run = load_run_config(
        preset,
        [
            *USER_FILES.get(preset, []),
            "prior.n_train=48",
            "prior.n_test=16",
            f"extract.sites=[{', '.join(sites)}]",
            "extract.batch_size=16",
            "extract.chunk_rows=32",
        ],
    )
    check_run(run)
    assert pick_dtype(run.dtype, "cuda") in (torch.bfloat16, torch.float32)
    keys = run_keys(run, FIRST)
    for name in FIRST:
        run_stage(name, run, tmp_path, keys)
    store = ActivationStore(ArtifactStore(tmp_path).require("extract", keys["extract"]).path)
    for site in sites:
        train, test = store.read("train", site), store.read("test", site)
        assert train.shape[0] == 48 and test.shape[0] == 16
        assert (train == train).all() and abs(train).sum() > 0  # finite, not all zero
