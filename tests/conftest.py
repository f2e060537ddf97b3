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


# A run small enough for tests: every stage of ioi-tiny, in seconds.
SMALL_OVERRIDES = [
    "prior.n_train=300",
    "prior.n_test=40",
    "target.arch={n_layer: 2, n_head: 2, d_model: 32, n_positions: 64, vocab_size: 400}",
    "target.train={steps: 20, batch_size: 16, eval_every: 10}",
    "target.min_accuracy=0",
    "extract.sites=[L0H1, L1H0, L1.attn]",
    "extract.chunk_rows=128",
    "backbone.arch={n_layer: 2, n_head: 2, d_model: 32, n_positions: 64, vocab_size: 400}",
    "backbone.train={steps: 20, batch_size: 16, eval_every: 10}",
    "controls.generator.n_heads=2",
    "controls.generator.d_head=8",
    "controls.inversionview.hidden=16",
    "controls.train={steps: 10, batch_size: 16, lr: 0.001, warmup: 2, eval_every: 5}",
    "sample.n_examples=3",
    "sample.samples_per_example=4",
    "sample.batch_size=5",
    "sample.max_new_tokens=16",
]


@pytest.fixture()
def small():
    return list(SMALL_OVERRIDES)


@pytest.fixture(scope="session")
def small_overrides() -> tuple[str, ...]:
    """The same overrides, for fixtures wider than one test (module- or session-scoped)."""
    return tuple(SMALL_OVERRIDES)


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


def _artifact_files(root) -> dict[str, bytes]:
    """Every data file under ``root`` by relative path, done-markers and the manifest aside
    (they record timings)."""
    from inversescope.storage import shards

    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and shards.MARKERS not in p.parts and p.name != "manifest.json"
    }


@pytest.fixture()
def artifact_files():
    """Byte-for-byte comparison of artifacts: ``artifact_files(path) -> {relative path: bytes}``."""
    return _artifact_files


@pytest.fixture()
def make_backbone():
    """A factory of small random GPT-2 backbones without dropout (eos = bos = token 0)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    def make(vocab: int = 20, d: int = 32, layers: int = 2, initializer_range: float = 0.02):
        cfg = GPT2Config(
            n_layer=layers,
            n_head=2,
            n_embd=d,
            vocab_size=vocab,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
            resid_pdrop=0,
            embd_pdrop=0,
            attn_pdrop=0,
            initializer_range=initializer_range,
        )
        return GPT2LMHeadModel(cfg).eval()

    return make


def build_small_run(workdir, overrides=(), preset: str = "ioi-tiny"):
    """Every stage of the small run in ``workdir``, in this process (no Prefect): the run
    config and each stage's result."""
    from inversescope.config import load_run_config
    from inversescope.flows.stage import STAGE_ORDER, run_keys, run_stage

    run = load_run_config(preset, [*SMALL_OVERRIDES, *overrides])
    keys = run_keys(run)
    return run, {name: run_stage(name, run, workdir, keys) for name in STAGE_ORDER}


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """One small ioi run built for the whole session (the API, the notebook, the README's
    quick start read it): ``(workdir, run config, stage results)``. Tests must not change it;
    one that writes copies it first."""
    workdir = tmp_path_factory.mktemp("small-run") / "runs"
    run, results = build_small_run(workdir)
    return workdir, run, results


@pytest.fixture(scope="session")
def build_run():
    """``build_small_run`` for fixtures of other folders (their own conftest shadows this
    module's name)."""
    return build_small_run


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server (moto's, threaded) on 127.0.0.1 for the session, with the standard
    AWS environment pointing at it: ``(endpoint URL, env)``. Stopped on every path."""
    import secrets

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        env = {
            "AWS_ACCESS_KEY_ID": "test-key-id",
            "AWS_SECRET_ACCESS_KEY": "secret-" + secrets.token_hex(12),
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ALLOW_HTTP": "true",
        }
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield endpoint, env
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        server.stop()


@pytest.fixture()
def bucket(s3_server):
    """A fresh bucket on the session's S3 server: its ``s3://NAME`` URL."""
    import secrets

    import boto3

    name = f"t-{secrets.token_hex(6)}"
    boto3.client("s3", endpoint_url=s3_server[0]).create_bucket(Bucket=name)
    return f"s3://{name}"
