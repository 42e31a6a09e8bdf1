"""The tokenizer the config names, the start-up vocabulary check, and failing fast offline."""

from __future__ import annotations

import pytest
import torch

from wdstream.config import Config
from wdstream.errors import ConfigError, HubUnreachableError, SourceError
from wdstream.read.decode import SampleDecoder
from wdstream.read.tokenizer import check_vocab, load_tokenizer, max_token_id, pad_token_id


def _word_level_folder(path, n_words: int):
    """A real WordLevel tokenizer (tokenizers library) with ``n_words`` words + 2 specials,
    wrapped with PreTrainedTokenizerFast and saved with save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1}
    for i in range(n_words):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    fast.save_pretrained(str(path))
    return str(path)


def test_default_is_byt5_and_fits_the_default_vocab():
    tok = load_tokenizer(Config())
    assert type(tok).__name__ == "ByT5Tokenizer"
    assert max_token_id(tok) == 383
    check_vocab(tok, Config())  # 384 ids fit vocab_size=384
    with pytest.raises(ConfigError, match=r"383.*383"):
        check_vocab(tok, Config(vocab_size=383))


def test_local_folder_tokenizer_and_vocab_error_names_both_numbers(tmp_path):
    folder = _word_level_folder(tmp_path / "tok", 500)  # ids 0..501
    tok = load_tokenizer(Config(tokenizer=folder))
    assert tok("w0 w499")["input_ids"] == [2, 501]
    check_vocab(tok, Config(vocab_size=502))
    with pytest.raises(ConfigError) as info:
        check_vocab(tok, Config(vocab_size=384))
    message = str(info.value)
    assert "501" in message and "384" in message and "vocab_size" in message
    # The decoder runs the same check at construction (start-up), not at the first batch.
    with pytest.raises(ConfigError, match="384"):
        SampleDecoder(Config(vocab_size=384, tokenizer=folder))


def test_added_tokens_count_in_the_vocab_check(tmp_path):
    folder = _word_level_folder(tmp_path / "tok", 10)  # ids 0..11
    tok = load_tokenizer(folder)
    tok.add_tokens(["<extra>"])  # id 12
    assert max_token_id(tok) == 12
    with pytest.raises(ConfigError, match="12"):
        check_vocab(tok, Config(vocab_size=12))


def test_pad_token_id():
    assert pad_token_id(load_tokenizer("byt5")) == 0


def test_truncation_keeps_eos_and_length():
    cfg = Config(max_text_length=16)
    dec = SampleDecoder(cfg)
    out = dec({"__key__": "k", "txt": ("x" * 300).encode()})
    ids = out["input_ids"]
    assert ids.dtype == torch.long and ids.shape == (16,)
    assert ids[-1].item() == dec.tokenizer.eos_token_id
    assert ids[:-1].tolist() == [ord("x") + 3] * 15  # ByT5: byte + 3


def test_missing_folder_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nope" / "tok"))


def test_bad_folder_is_a_source_error(tmp_path):
    (tmp_path / "junk.txt").write_text("not a tokenizer")
    with pytest.raises(SourceError, match=str(tmp_path)):
        load_tokenizer(str(tmp_path))


@pytest.mark.timeout(60)
def test_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachableError, match="not in the local cache"):
        load_tokenizer(Config(tokenizer="some-org/some-tokenizer"))


@pytest.mark.timeout(60)
def test_hub_id_unreachable_endpoint_fails_fast(monkeypatch):
    """Not offline by environment, but the Hub endpoint refuses connections (a closed loopback
    port stands in for a firewalled Hub): a clear error, no hang, no traffic off this machine."""
    import socket

    import huggingface_hub.constants as hub_constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HubUnreachableError, match="did not answer"):
        load_tokenizer("some-org/some-tokenizer")
