"""Extraction equals an independent computation: plain forward hooks and weight slices."""

import numpy as np
import pytest
import torch

from inversescope.core.config import ExtractConfig
from inversescope.core.extract import SiteReader
from inversescope.extraction import extract_to_store
from inversescope.storage.activations import ActivationStore
from inversescope.tasks import ioi

TEXTS = [
    "When Mary and John went to the store, John gave a drink to",
    "Then, Alice and Bob had a lot of fun at the garden. Alice gave a ring to",
    "hello",
    "After Tom and Sarah went to the school, Tom gave a bag to",
]
SITES = ["L0H0", "L0H3", "L0.attn", "L1H2", "L2H1", "L2.attn"]


def reference(model, tokenizer, texts, sites):
    """Per text, unbatched: hook every c_proj, take its input/output at the last token."""
    captured = {}

    def hook(layer):
        def fn(module, args, output):
            captured[layer] = (args[0].detach(), output.detach())

        return fn

    handles = [
        blk.attn.c_proj.register_forward_hook(hook(i)) for i, blk in enumerate(model.transformer.h)
    ]
    n_head = model.config.n_head
    out = {s: [] for s in sites}
    try:
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            with torch.no_grad():
                model(input_ids=ids)
            for s in sites:
                layer = int(s[1 : s.index("H") if "H" in s else s.index(".")])
                z, o = captured[layer]
                if s.endswith(".attn"):
                    out[s].append(o[0, -1])
                else:
                    h = int(s.split("H")[1])
                    w = model.transformer.h[layer].attn.c_proj.weight  # (in, out)
                    dh = w.shape[0] // n_head
                    zh = z[0, -1, h * dh : (h + 1) * dh]
                    out[s].append(zh @ w[h * dh : (h + 1) * dh])  # no bias
    finally:
        for h in handles:
            h.remove()
    return {s: torch.stack(v) for s, v in out.items()}


def test_sites_equal_hooks_and_weight_slices(tiny_gpt2, tiny_tokenizer):
    reader = SiteReader(tiny_gpt2, tiny_tokenizer, SITES)
    got = reader.read(TEXTS)  # batched, right-padded: lengths differ
    want = reference(tiny_gpt2, tiny_tokenizer, TEXTS, SITES)
    for s in SITES:
        assert got[s].shape == (len(TEXTS), tiny_gpt2.config.n_embd)
        torch.testing.assert_close(got[s], want[s], rtol=1e-5, atol=1e-5)


def test_head_terms_sum_to_attention_output(tiny_gpt2, tiny_tokenizer):
    """Sum over heads of the head terms, plus the projection bias, is the layer's output."""
    sites = [f"L1H{h}" for h in range(4)] + ["L1.attn"]
    got = SiteReader(tiny_gpt2, tiny_tokenizer, sites).read(TEXTS)
    total = sum(got[f"L1H{h}"] for h in range(4)) + tiny_gpt2.transformer.h[1].attn.c_proj.bias
    torch.testing.assert_close(total, got["L1.attn"], rtol=1e-5, atol=1e-5)


def test_forward_stops_after_deepest_site(tiny_gpt2, tiny_tokenizer):
    calls = []
    handle = tiny_gpt2.transformer.h[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        SiteReader(tiny_gpt2, tiny_tokenizer, ["L0H1", "L1.attn"]).read(TEXTS)
    finally:
        handle.remove()
    assert calls == []


def _extract(model, tokenizer, texts, out, on_chunk=None):
    cfg = ExtractConfig(sites=["L0H1", "L2.attn"], batch_size=7, chunk_rows=16)
    return extract_to_store(model, tokenizer, texts, cfg, out, "test", on_chunk)


class Killed(Exception):
    pass


def test_killed_extraction_resumes_to_identical_arrays(tiny_gpt2, tiny_tokenizer, tmp_path):
    train, test = ioi.generate_prior(70, 20, seed=3)
    texts = {"train": [r["text"] for r in train], "test": [r["text"] for r in test]}
    _extract(tiny_gpt2, tiny_tokenizer, texts, tmp_path / "full")

    commits = []

    def kill_after_two(split, stop):
        commits.append((split, stop))
        if len(commits) == 2:
            raise Killed

    with pytest.raises(Killed):
        _extract(tiny_gpt2, tiny_tokenizer, texts, tmp_path / "resumed", kill_after_two)
    resumed_chunks = []
    metrics = _extract(
        tiny_gpt2,
        tiny_tokenizer,
        texts,
        tmp_path / "resumed",
        lambda split, stop: resumed_chunks.append((split, stop)),
    )
    # the rerun did not redo the two committed chunks
    assert resumed_chunks[0] == ("train", 48)
    assert metrics["rows"] == {"train": 70, "test": 20}

    full, resumed = ActivationStore(tmp_path / "full"), ActivationStore(tmp_path / "resumed")
    for split in ("train", "test"):
        assert full.sites(split) == ["L0H1", "L2.attn"]
        for site in full.sites(split):
            a, b = full.read(split, site), resumed.read(split, site)
            assert not np.isnan(a).any()
            np.testing.assert_array_equal(a, b)


def test_store_layout_and_attrs(tiny_gpt2, tiny_tokenizer, tmp_path):
    texts = {"train": TEXTS * 5, "test": TEXTS}
    _extract(tiny_gpt2, tiny_tokenizer, texts, tmp_path)
    store = ActivationStore(tmp_path)
    arr = store.array("train", "L0H1")
    assert arr.shape == (20, tiny_gpt2.config.n_embd) and arr.chunks == (16, 32)
    codecs = [type(c).__name__ for c in arr.compressors]
    assert "Crc32cCodec" in codecs and "BloscCodec" in codecs
    assert arr.attrs["site"] == "L0H1" and arr.attrs["position"] == "last"
    # row i <-> prompt i
    direct = SiteReader(tiny_gpt2, tiny_tokenizer, ["L0H1"]).read([TEXTS[2]])["L0H1"]
    np.testing.assert_allclose(store.read("train", "L0H1", 2, 3), direct.numpy(), rtol=1e-6)
    with pytest.raises(KeyError, match="stored sites"):
        store.array("train", "L5H5")


def test_float16_store_reads_back_as_float32(tiny_gpt2, tiny_tokenizer, tmp_path):
    cfg = ExtractConfig(sites=["L1H1"], batch_size=3, chunk_rows=4, dtype="float16")
    extract_to_store(tiny_gpt2, tiny_tokenizer, {"test": TEXTS}, cfg, tmp_path, "test")
    store = ActivationStore(tmp_path)
    assert store.array("test", "L1H1").dtype == np.float16
    got = store.read("test", "L1H1")
    want = SiteReader(tiny_gpt2, tiny_tokenizer, ["L1H1"]).read(TEXTS)["L1H1"].numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-4)
