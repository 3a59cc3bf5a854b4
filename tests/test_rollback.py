"""KV-cache rollback: after a rejection, the model's next logits are those of a fresh evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from quickdraft import model_store
from quickdraft.llama_model import LlamaModel, common_prefix_len


@pytest.fixture(scope="module")
def pair():
    path = model_store.resolve("gemma-3-270m-q8_0")
    return LlamaModel(path, threads=2, n_ctx=2048), LlamaModel(path, threads=2, n_ctx=2048)


def fresh_logits(model, tokens):
    model.reset()
    return model.evaluate(tokens, 1)[0].copy()


@pytest.mark.parametrize("prompt_len", [40, 700])  # 700 > Gemma 3's sliding window of 512
def test_logits_after_rollback_equal_a_fresh_evaluation(pair, prompt_len):
    used, fresh = pair
    words = ("the quick brown fox jumps over the lazy dog and then " * 200).strip()
    prefix = used.tokenize(words)[:prompt_len]
    wrong_draft = [1000, 2000, 3000, 4000, 5000]
    used.reset()
    used.evaluate(prefix + wrong_draft, len(wrong_draft) + 1)  # verify a draft ...
    accepted = prefix + wrong_draft[:2] + [777]  # ... keep two tokens and the target's correction
    after = used.evaluate(accepted, 1)[0].copy()
    assert used.tokens == accepted
    np.testing.assert_array_equal(after, fresh_logits(fresh, accepted))


class RefusesTailRemoval:
    """llama.cpp's functions, except that removing a tail of the KV cache fails, as it does for recurrent and
    hybrid models (their state cannot be rolled back position by position)."""

    def __init__(self, lib):
        self._lib = lib

    def __getattr__(self, name):
        return getattr(self._lib, name)

    @staticmethod
    def llama_memory_seq_rm(*args):
        return False


def test_a_cache_that_cannot_drop_a_tail_is_rebuilt_at_the_right_positions(pair):
    used, fresh = pair
    prefix = used.tokenize("A cache that cannot remove a tail must start over from position zero.")
    used.reset()
    used.evaluate(prefix + [1000, 2000, 3000], 4)
    real = used._lib
    used._lib = RefusesTailRemoval(real)
    try:
        accepted = prefix + [1000, 777]
        after = used.evaluate(accepted, 1)[0].copy()
    finally:
        used._lib = real
    assert used.tokens == accepted
    np.testing.assert_array_equal(after, fresh_logits(fresh, accepted))


def test_rollback_removes_only_the_rejected_tail(pair):
    used, _ = pair
    used.reset()
    base = used.tokenize("One two three four five six")
    used.evaluate(base + [11, 12, 13], 4)
    calls = used.evaluated_tokens
    used.evaluate(base + [11, 99], 1)
    assert used.evaluated_tokens - calls == 1  # only the new token was evaluated, not the prefix


def test_common_prefix_len():
    assert common_prefix_len([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix_len([1, 2, 3], [1, 9, 3]) == 1
    assert common_prefix_len([], [1]) == 0
    a = list(range(1000))
    b = a[:637] + [-1] + a[638:]
    assert common_prefix_len(a, b) == 637
