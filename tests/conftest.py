import os
import random

# nnsight patches `object` with a C-level method; beartype (pulled in by Prefect's test server)
# enumerates object.__dict__ at import and fails if nnsight came first. Import it first.
import beartype  # noqa: F401
import numpy as np
import pytest
import torch

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from inversescope.core.tokenizer import train_bpe_tokenizer
    from inversescope.tasks import ioi

    train, _ = ioi.generate_prior(400, 10, seed=1)
    return train_bpe_tokenizer([r["text"] + r["answer"] for r in train], 400)


@pytest.fixture()
def tiny_gpt2(tiny_tokenizer):
    from inversescope.core.config import TinyModelConfig
    from inversescope.core.models import build_tiny_gpt2

    arch = TinyModelConfig(n_layer=3, n_head=4, d_model=32, n_positions=64, vocab_size=400)
    return build_tiny_gpt2(arch, len(tiny_tokenizer), tiny_tokenizer.eos_token_id).eval()
