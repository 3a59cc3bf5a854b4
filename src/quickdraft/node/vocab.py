"""The coordinator's tokenizer for a remote target: the target's own vocabulary, loaded here once.

A coordinator whose target lives on another machine still tokenizes prompts, renders chat templates and
turns tokens into text. It does so with llama.cpp's own tokenizer, loaded "vocabulary only" from a GGUF file
that holds the target model's metadata and no tensors (6.5 MB for Gemma 3's 262,144 tokens, against the
model's 290 MB). The node cuts that file out of its model (`vocab_gguf`) and sends it once; the
coordinator keeps it under ~/.cache/quickdraft/vocab/<fingerprint>.gguf and checks, after loading it, that its
fingerprint is the node's. Tokenization is then exactly the node's, with no round trip per request.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

from quickdraft.errors import IncompatibleVocabError
from quickdraft.model_store import cache_dir

# GGUF value types with a fixed size in bytes (8: string, 9: array)
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def _metadata_end(buf) -> tuple[int, int, int]:
    """(version, number of key-value pairs, offset where the key-value section ends) of a GGUF file."""
    magic, ver, _n_tensors, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
    if magic != b"GGUF":
        raise ValueError("not a GGUF file")

    def skip(kind: int, off: int) -> int:
        if kind in _FIXED_SIZES:
            return off + _FIXED_SIZES[kind]
        if kind == _STRING:
            return off + 8 + struct.unpack_from("<Q", buf, off)[0]
        if kind == _ARRAY:
            item, n = struct.unpack_from("<IQ", buf, off)
            off += 12
            if item in _FIXED_SIZES:
                return off + n * _FIXED_SIZES[item]
            for _ in range(n):
                off = skip(item, off)
            return off
        raise ValueError(f"unknown GGUF value type {kind}")

    off = 24
    for _ in range(n_kv):
        key_len = struct.unpack_from("<Q", buf, off)[0]
        off += 8 + key_len
        kind = struct.unpack_from("<I", buf, off)[0]
        off = skip(kind, off + 4)
    return ver, n_kv, off


def vocab_gguf(model_path: str | os.PathLike) -> bytes:
    """A GGUF file with all of the model's metadata (vocabulary, chat template, hyperparameters) and no
    tensors: enough for llama.cpp to load it `vocab_only`."""
    with open(model_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        ver, n_kv, end = _metadata_end(buf)
        return b"GGUF" + struct.pack("<IQQ", ver, 0, n_kv) + bytes(buf[24:end])


def vocab_cache_path(fingerprint: str) -> Path:
    return cache_dir() / "vocab" / f"{fingerprint}.gguf"


def load_vocab(fingerprint: str, fetch, *, name: str):
    """A vocabulary-only LlamaModel for `fingerprint`, from the cache or from `fetch()` (the GGUF bytes)."""
    from quickdraft.llama_model import LlamaModel

    path = vocab_cache_path(fingerprint)
    if not path.is_file():
        data = fetch()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    tokenizer = LlamaModel(path, vocab_only=True, name=name)
    if tokenizer.vocab_fingerprint != fingerprint:
        path.unlink(missing_ok=True)
        raise IncompatibleVocabError(
            f"the vocabulary file the node sent for {name} does not match the fingerprint it advertises"
        )
    return tokenizer
