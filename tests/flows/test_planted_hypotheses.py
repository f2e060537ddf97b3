"""The search finds a planted answer. A one-layer attention-only GPT-2 is built by hand (no
training), so that at the last position head L0H0 attends only to position 0 and L0H1 only to
the previous position, each copying that token's embedding. The whole pipeline runs on it as a
local target (source: local), samples drawn from the fine-tuned backbone alone (method prior):
a sample lands at distance 0 exactly when it shares the token the head reads. The hypotheses
stage must rank ``tok[0]`` first at L0H0 and ``tok[read-1]`` first at L0H1 with q < 0.05, and
neither first at the other head; with each site's samples handed to random references (the
shuffled control) nothing may pass."""

import numpy as np
import polars as pl
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from inversescope.config import check_run, load_run_config
from inversescope.core.extract import SiteReader
from inversescope.core.hypotheses import shuffled_control
from inversescope.flows import stage_hypotheses
from inversescope.flows.cli import main
from inversescope.flows.stage import STAGE_ORDER, run_keys, run_stage
from inversescope.storage.artifacts import ArtifactStore
from inversescope.storage.layout import read_hypotheses
from inversescope.tasks import ioi

TOKEN, POSITION = 64, 64  # residual dims that hold the token and the position one-hot
BETA = 8.0  # scale of the position one-hot (the token part has norm sqrt(TOKEN))


def planted_gpt2(vocab: int, eos: int, seed: int = 0) -> GPT2LMHeadModel:
    """One block, two heads of width 64, MLP zero. Token embeddings are random with zero mean
    and one norm, in the first 64 residual dims; position p is BETA * e_p in the last 64. Every
    input then has the same mean and norm, so ln_1 only rescales: keys and queries read the
    position part, values the token part, whatever the token.

    - L0H0: a constant query (bias) against the key of position 0: attends to position 0.
    - L0H1: the query of position i is the key of position i - 1: attends to the previous one.
    - both: value = the token part, output projection = identity onto the token dims, so the
      site (the head's term of the output) is the attended token's (normalised) embedding."""
    d, dh = TOKEN + POSITION, (TOKEN + POSITION) // 2
    cfg = GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=d,
        n_positions=POSITION,
        vocab_size=vocab,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        resid_pdrop=0,
        embd_pdrop=0,
        attn_pdrop=0,
    )
    model = GPT2LMHeadModel(cfg).eval()
    wte = torch.randn(vocab, TOKEN, generator=torch.Generator().manual_seed(seed))
    wte -= wte.mean(1, keepdim=True)
    wte *= TOKEN**0.5 / wte.norm(dim=1, keepdim=True)
    q, k, v = 0, d, 2 * d  # column blocks of c_attn: x @ W + b -> (q | k | v)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        t, block = model.transformer, model.transformer.h[0]
        t.wte.weight[:, :TOKEN] = wte  # (vocab, d)
        t.wpe.weight[:, TOKEN:] = BETA * torch.eye(POSITION)  # (positions, d)
        for ln in (block.ln_1, block.ln_2, t.ln_f):
            ln.weight.fill_(1.0)
        w, b = block.attn.c_attn.weight, block.attn.c_attn.bias  # (d, 3d), (3d,)
        b[q + 0] = 100.0  # L0H0: query e_0, whatever the position
        w[TOKEN + 0, k + 0] = 1.0  # ... against the key of position 0
        for i in range(POSITION):  # L0H1: key of position i in dim i, query of i in dim i - 1
            w[TOKEN + i, k + dh + i] = 1.0
            if i:
                w[TOKEN + i, q + dh + i - 1] = 12.0
        for h in range(2):  # values and output: the token part, unchanged
            for i in range(TOKEN):
                w[i, v + h * dh + i] = 1.0
                block.attn.c_proj.weight[h * dh + i, i] = 1.0
    return model


def test_the_planted_heads_read_what_they_were_built_to(tiny_tokenizer):
    model = planted_gpt2(len(tiny_tokenizer), tiny_tokenizer.eos_token_id)
    _, test = ioi.generate_prior(10, 12, seed=3)
    texts = [r["text"] for r in test]
    enc = tiny_tokenizer(texts, return_tensors="pt", padding=True)
    model.config._attn_implementation = "eager"  # to return the attention pattern
    with torch.no_grad():
        att = model(**enc, output_attentions=True).attentions[0]  # (B, H, T, T)
    last = enc["attention_mask"].sum(1) - 1
    for i, t in enumerate(last.tolist()):
        assert att[i, 0, t, 0] > 1 - 1e-6
        assert att[i, 1, t, t - 1] > 1 - 1e-6
    # through the site reader the pipeline uses: same token read -> distance 0, else far
    model.config._attn_implementation = "sdpa"
    acts = SiteReader(model, tiny_tokenizer, ["L0H0", "L0H1"]).read(texts)
    for site, position in (("L0H0", lambda ids: ids[0]), ("L0H1", lambda ids: ids[-2])):
        read = [position(tiny_tokenizer(t)["input_ids"]) for t in texts]
        z = torch.nn.functional.normalize(acts[site], dim=1)
        distance = 1 - z @ z.T
        same = torch.tensor([[a == b for b in read] for a in read])
        assert distance[same].abs().max() < 1e-5
        assert distance[~same].min() > 0.3


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, small_overrides, tiny_tokenizer):
    root = tmp_path_factory.mktemp("planted")
    tok = tiny_tokenizer
    target, backbone = root / "target", root / "backbone"
    planted_gpt2(len(tok), tok.eos_token_id).save_pretrained(target)
    tok.save_pretrained(target)
    torch.manual_seed(0)
    GPT2LMHeadModel(  # the generator's backbone, untrained: the backbone stage fine-tunes it
        GPT2Config(
            n_layer=2,
            n_head=2,
            n_embd=32,
            n_positions=64,
            vocab_size=len(tok),
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
            resid_pdrop=0,
            embd_pdrop=0,
            attn_pdrop=0,
        )
    ).save_pretrained(backbone)
    tok.save_pretrained(backbone)
    kept = ("extract.sites", "sample.", "backbone.train", "prior.")
    run = load_run_config(
        "ioi-tiny",
        [
            *(o for o in small_overrides if not o.startswith(kept)),
            "target.source=local",
            f"target.path={target}",
            "backbone.source=local",
            f"backbone.path={backbone}",
            "backbone.finetune=full",  # ioi-tiny's own backbone is the target, not fine-tuned
            "backbone.train={steps: 150, batch_size: 16, lr: 0.005, warmup: 20, eval_every: 150}",
            "prior.n_train=2000",
            "prior.n_test=100",
            "controls.method=prior",
            "extract.sites=[L0H0, L0H1]",
            "sample.n_examples=20",
            "sample.samples_per_example=48",
            "sample.batch_size=64",
            "sample.max_new_tokens=40",
        ],
    )
    check_run(run)
    work = root / "work"
    keys = run_keys(run)
    results = {n: run_stage(n, run, work, keys) for n in STAGE_ORDER}
    return run, work, keys, results


@pytest.mark.slow
def test_the_search_ranks_the_planted_token_first(planted_run, capsys):
    run, work, keys, results = planted_run
    table = read_hypotheses(results["hypotheses"].path)
    top = table.filter(pl.col("rank") == 1).select("site", "candidate", "fcr", "q_value")
    print(top)  # the result, for the log
    best = {row["site"]: row for row in top.iter_rows(named=True)}
    assert best["L0H0"]["candidate"] == "tok[0]" and best["L0H0"]["q_value"] < 0.05
    assert best["L0H1"]["candidate"] == "tok[read-1]" and best["L0H1"]["q_value"] < 0.05
    assert best["L0H0"]["fcr"] == best["L0H1"]["fcr"] == 1.0  # every kept sample shares it
    other = table.filter(
        ((pl.col("site") == "L0H0") & (pl.col("candidate") == "tok[read-1]"))
        | ((pl.col("site") == "L0H1") & (pl.col("candidate") == "tok[0]"))
    )
    assert other.height == 2 and (other["rank"].fill_null(99) > 1).all()
    assert main(["hypotheses", str(work), "--site", "L0H0", "--top", "1"]) == 0
    assert "tok[0]" in capsys.readouterr().out


@pytest.mark.slow
def test_the_shuffled_control_passes_nothing(planted_run):
    run, work, keys, results = planted_run
    store = ArtifactStore(work)
    inputs = {n: store.require(n, keys[n]) for n in stage_hypotheses.INPUTS}
    prepared = stage_hypotheses.prepare(run, inputs)
    real = stage_hypotheses.score(run, prepared)
    assert sum(h.rank is not None for h in real) >= 2
    for seed in range(3):
        control = stage_hypotheses.score(run, prepared, shuffled_control(prepared.sites, seed))
        assert [h.candidate for h in control if h.rank is not None] == []
        q = np.array([h.q_value for h in control if h.status == "tested"])
        assert len(q) > 20 and q.min() >= 0.05
