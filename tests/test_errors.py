"""Bad input gets a clear error that says what is wrong."""

from __future__ import annotations

import pytest

from quickdraft import Engine
from quickdraft.errors import (
    ContextLengthError,
    IncompatibleVocabError,
    InvalidRequestError,
    ModelLoadError,
)
from quickdraft.llama_model import LlamaModel


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        Engine.load(str(tmp_path / "nope.gguf"), "none")


def test_unknown_model_name():
    with pytest.raises(ModelLoadError, match="unknown model 'llama-9000'.*gemma-3-270m"):
        Engine.load("llama-9000", "none")


def test_file_that_is_not_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        LlamaModel(bad)


def test_corrupt_gguf(tmp_path):
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    with pytest.raises(ModelLoadError, match="could not load"):
        LlamaModel(bad)


def test_truncated_gguf(tmp_path):
    from quickdraft import model_store

    src = model_store.resolve("smollm2-135m")
    cut = tmp_path / "truncated.gguf"
    cut.write_bytes(src.read_bytes()[: 4 << 20])
    with pytest.raises(ModelLoadError):
        LlamaModel(cut)


def test_incompatible_vocabularies_name_both_models_and_sizes():
    with pytest.raises(IncompatibleVocabError) as e:
        Engine.load("gemma-3-270m-q8_0", "smollm2-135m")
    msg = str(e.value)
    assert "smollm2-135m" in msg and "gemma-3-270m-q8_0" in msg
    assert "49152" in msg and "262144" in msg


def test_empty_prompt(engine):
    with pytest.raises(InvalidRequestError, match="empty"):
        engine.generate("", max_tokens=4)
    with pytest.raises(InvalidRequestError, match="empty"):
        engine.generate([], max_tokens=4)


def test_prompt_longer_than_the_context(engine):
    with pytest.raises(ContextLengthError, match="context"):
        engine.generate("word " * 5000, max_tokens=4)


def test_context_limit_of_a_small_context():
    e = Engine.load("smollm2-135m", "ngram", n_ctx=64)
    n_ctx = e.target.n_ctx  # llama.cpp rounds the context up (to 256 here)
    with pytest.raises(ContextLengthError, match=str(n_ctx)):
        e.generate("one two three " * (n_ctx // 2), max_tokens=4)
    # a prompt that fits generates until the context is full, then stops with "length"
    r = e.generate("one two three " * (n_ctx // 8), max_tokens=5000)
    assert r.finish_reason == "length"
    # the last token is read off the logits of the context's last position: it needs no cell of its own
    assert n_ctx <= r.stats.prompt_tokens + r.stats.completion_tokens <= n_ctx + 1


@pytest.mark.parametrize("k", [0, -1, 17, 2.5])
def test_k_out_of_range(engine, k):
    with pytest.raises(InvalidRequestError, match="K"):
        engine.generate("Hello", max_tokens=4, k=k)


def test_k_out_of_range_at_load():
    with pytest.raises(InvalidRequestError, match="K"):
        Engine.load("smollm2-135m", "ngram", k=0)


def test_bad_max_tokens_and_sampling(engine):
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        engine.generate("Hello", max_tokens=0)
    with pytest.raises(InvalidRequestError):
        engine.generate("Hello", max_tokens=4, temperature=-0.5)


def test_errors_raise_before_streaming_starts(engine):
    with pytest.raises(InvalidRequestError):
        engine.stream("", max_tokens=4)  # no iteration needed


def test_unknown_drafter(engine):
    with pytest.raises(InvalidRequestError, match="no drafter"):
        engine.generate("Hello", max_tokens=4, draft="telepathy")


def test_out_of_range_token_ids(engine):
    with pytest.raises(InvalidRequestError, match="out of range"):
        engine.generate([1, 2, 10**9], max_tokens=4)
