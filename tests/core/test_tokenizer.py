"""The local byte-level BPE tokenizer: lossless, one special token, no hub."""

from inversescope.core.tokenizer import EOS, train_bpe_tokenizer


def test_roundtrip_special_token_and_vocab_size():
    texts = ["When Mary and John went to the store, John gave a drink to Mary"] * 50
    tok = train_bpe_tokenizer(texts, 300)
    assert len(tok) <= 300
    assert tok.eos_token == tok.bos_token == tok.pad_token == EOS
    for text in [texts[0], "unseen wörds ✓ and bytes"]:  # byte fallback: any string encodes
        ids = tok(text)["input_ids"]
        assert EOS not in tok.convert_ids_to_tokens(ids)  # no special tokens added
        assert tok.decode(ids) == text
    # frequent words become single tokens
    assert len(tok(" John")["input_ids"]) == 1
