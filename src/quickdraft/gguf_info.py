"""What a GGUF file holds, read from its header only: no tensor data is touched.

`read_info(path)` returns a `ModelInfo`: architecture, parameter count and bytes per layer (from the tensor
infos' shapes and types), quantization (`general.file_type`), context length, vocabulary size and
fingerprint, chat template present, and the attention shapes a KV-cache estimate needs. Results are cached in
one JSON file (`~/.cache/quickdraft/gguf-info.json`, or QUICKDRAFT_GGUF_INFO_CACHE) keyed by the file's path,
size and modification time, so listing a folder of models twice reads no header twice.

Why not `gguf.GGUFReader`: it builds a numpy view per array item, and a vocabulary is an array of 150,000-
260,000 strings; opening Gemma 3 270M with it took 20 s on this machine. We stream the header once with the
`gguf` package's own definitions of the format (value types, quantization block sizes, file types, keys).

Vocabularies. `vocab_fingerprint` is sha256 over every token's text, each followed by a zero byte, in id
order: the same hash `LlamaModel.vocab_fingerprint` computes through llama.cpp, so equal fingerprints mean a
draft's token ids mean the target's strings (what quickdraft requires). `same_family` is the looser test
llama.cpp's own speculative example applies (same tokenizer type and special tokens, sizes within 128,
equal tokens from id 5 on), approximated here by the first `FAMILY_PREFIX_TOKENS` tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import BinaryIO

from gguf import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType, LlamaFileType

from quickdraft.atomic_file import write_atomic
from quickdraft.errors import QuickdraftError

CACHE_ENV = "QUICKDRAFT_GGUF_INFO_CACHE"
CACHE_VERSION = 3
FAMILY_PREFIX_TOKENS = 4096
FAMILY_SKIP_TOKENS = 5  # llama.cpp's SPEC_VOCAB_CHECK_START_TOKEN_ID: the first ids are special tokens
FAMILY_MAX_SIZE_DIFFERENCE = 128  # llama.cpp's SPEC_VOCAB_MAX_SIZE_DIFFERENCE
NOT_LANGUAGE_MODELS = {"clip", "mmproj"}  # vision/audio projectors ship as GGUFs beside the model

_SCALARS = {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}
_KEPT_ARRAYS = {"tokenizer.ggml.tokens"}  # other arrays (scores, merges...) are skipped, not decoded
_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.")
_SPLIT_NAME = re.compile(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")


class GGUFInfoError(QuickdraftError):
    """A file that is not a GGUF model we can read."""


class GGUFUnsupported(GGUFInfoError):
    """A GGUF this reader does not understand (a newer tensor type, nested arrays) that llama.cpp may load."""


@dataclass
class ModelInfo:
    path: str
    file_size: int  # bytes on disk, all split parts together
    architecture: str
    name: str  # general.name, or the file's stem
    n_params: int
    file_type: str  # "Q4_K_M", "F16", ... (general.file_type; guessed from the tensors when absent)
    context_length: int
    n_vocab: int
    vocab_fingerprint: str
    vocab_prefix_fingerprint: str  # tokens FAMILY_SKIP_TOKENS..FAMILY_PREFIX_TOKENS, for same_family
    tokenizer_model: str
    bos_token_id: int | None
    eos_token_id: int | None
    has_chat_template: bool
    n_layers: int  # block_count
    embedding_length: int
    n_head: int
    n_head_kv: int
    key_length: int  # per head
    value_length: int
    tensor_bytes: int  # all tensors' data
    layer_bytes: list[int] = field(default_factory=list)  # per block (blk.N.*), in order
    input_bytes: int = 0  # token embeddings: llama.cpp keeps them on the CPU
    output_bytes: int = 0  # output norm + head (the tied embedding when there is no output.weight)
    tied_embeddings: bool = False  # no output.weight: the head is token_embd, copied to a GPU that runs it
    model_type: str = "model"  # general.type: "model", or "adapter" (LoRA), "mmproj" (vision projector)

    @property
    def is_language_model(self) -> bool:
        return (self.model_type == "model" and self.architecture not in NOT_LANGUAGE_MODELS
                and self.n_vocab > 0 and self.n_layers > 0)

    @property
    def kind(self) -> str:
        """What the file is, for a message: "model (llama)", "adapter (llama)", "mmproj (clip)"."""
        return f"{self.model_type} ({self.architecture})"

    @property
    def params_label(self) -> str:
        """270M, 1.5B, 14.8B."""
        n = self.n_params
        return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"

    def kv_bytes_per_layer(self, ctx: int) -> int:
        """An F16 K and V cache for `ctx` tokens in one layer (sliding-window layers counted in full)."""
        return ctx * self.n_head_kv * (self.key_length + self.value_length) * 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelInfo:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def same_vocabulary(a: ModelInfo, b: ModelInfo) -> bool:
    """Identical token lists: a draft with this vocabulary can serve the target (quickdraft's rule)."""
    return a.n_vocab == b.n_vocab and a.vocab_fingerprint == b.vocab_fingerprint


def same_family(a: ModelInfo, b: ModelInfo) -> bool:
    """llama.cpp's looser compatibility: same tokenizer and special tokens, sizes within 128, same leading
    tokens. Models of one family whose vocabularies differ only in their padding or extra tokens pass.
    Vocabularies shorter than FAMILY_PREFIX_TOKENS must be the same."""
    if min(a.n_vocab, b.n_vocab) < FAMILY_PREFIX_TOKENS:
        return same_vocabulary(a, b)
    return (
        a.tokenizer_model == b.tokenizer_model
        and a.bos_token_id == b.bos_token_id
        and a.eos_token_id == b.eos_token_id
        and abs(a.n_vocab - b.n_vocab) <= FAMILY_MAX_SIZE_DIFFERENCE
        and a.vocab_prefix_fingerprint == b.vocab_prefix_fingerprint
    )


# ---- the cache ---------------------------------------------------------------------------------------------
def cache_path() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    root = os.environ.get("QUICKDRAFT_CACHE") or os.path.join(Path.home(), ".cache", "quickdraft")
    return Path(root) / "gguf-info.json"


def _load_cache(path: Path) -> dict:
    """Entries by path; a missing, unreadable or damaged cache is empty (its headers are read again)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _cached(entry, stamp: dict) -> ModelInfo | None:
    """The ModelInfo of a cache entry for a file with this size and mtime; None if it is stale or damaged."""
    if not isinstance(entry, dict) or entry.get("stamp") != stamp:
        return None
    try:
        return ModelInfo.from_dict(entry["info"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _save_cache(path: Path, entries: dict) -> None:
    try:
        write_atomic(path, json.dumps({"version": CACHE_VERSION, "files": entries}))
    except OSError:
        pass  # a read-only cache or a full disk only costs re-reading headers


def _cache_key(path: Path) -> tuple[str, dict]:
    st = path.stat()
    return str(path), {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_info(path: str | os.PathLike, *, use_cache: bool = True) -> ModelInfo:
    """The model's metadata, from the cache when the file has not changed since it was read."""
    return read_infos([path], use_cache=use_cache)[0]


def read_infos(paths: list, *, use_cache: bool = True) -> list[ModelInfo]:
    """`read_info` for many files with one cache read and write; raises GGUFInfoError for the first bad one.
    Use `try_read_infos` to get errors per file instead."""
    results = try_read_infos(paths, use_cache=use_cache)
    for r in results:
        if isinstance(r, GGUFInfoError):
            raise r
    return results  # type: ignore[return-value]


def try_read_infos(paths: list, *, use_cache: bool = True) -> list[ModelInfo | GGUFInfoError]:
    """Per path: its ModelInfo, or the GGUFInfoError saying why it could not be read."""
    cpath = cache_path()
    entries = _load_cache(cpath) if use_cache else {}
    changed = False
    out: list[ModelInfo | GGUFInfoError] = []
    for p in paths:
        path = Path(p).expanduser().absolute()
        try:
            key, stamp = _cache_key(path)
            hit = _cached(entries.get(key), stamp)
            if hit is not None:
                out.append(hit)
                continue
            info = _read_uncached(path)
            entries[key] = {"stamp": stamp, "info": info.to_dict()}
            changed = True
            out.append(info)
        except GGUFInfoError as e:
            out.append(e)
        except (OSError, ValueError, KeyError, struct.error, UnicodeDecodeError) as e:
            out.append(GGUFInfoError(f"{path}: cannot read as GGUF ({e.__class__.__name__}: {e})"))
    if changed and use_cache:
        _save_cache(cpath, {k: v for k, v in entries.items() if os.path.exists(k)})  # forget deleted files
    return out


# ---- the header ------------------------------------------------------------------------------------------------
@dataclass
class _Header:
    kv: dict
    tensors: list[tuple[str, int, int, int]]  # name, n_elements, n_bytes, ggml type
    vocab_hash: str = ""
    vocab_prefix_hash: str = ""
    n_tokens: int = 0


class _Stream:
    """Little- or big-endian reads from a buffered file."""

    def __init__(self, f: BinaryIO, endian: str):
        self.f = f
        self.endian = endian

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise GGUFInfoError("the header ends early (truncated file?)")
        return struct.unpack(self.endian + fmt, data)[0]

    def string(self) -> bytes:
        n = self.unpack("Q")
        if n > 1 << 26:
            raise GGUFInfoError(f"implausible string length {n}")
        data = self.f.read(n)
        if len(data) != n:
            raise GGUFInfoError("the header ends early (truncated file?)")
        return data

    def skip(self, n: int) -> None:
        self.f.seek(n, os.SEEK_CUR)


def _read_value(s: _Stream, vtype: int, key: str, header: _Header):
    vtype = GGUFValueType(vtype)
    if vtype == GGUFValueType.STRING:
        return s.string().decode("utf-8", "replace")
    if vtype != GGUFValueType.ARRAY:
        return s.unpack(_SCALARS[vtype])
    item_type = GGUFValueType(s.unpack("I"))
    count = s.unpack("Q")
    if key in _KEPT_ARRAYS and item_type == GGUFValueType.STRING:
        full, prefix = hashlib.sha256(), hashlib.sha256()
        for i in range(count):
            text = s.string()
            full.update(text + b"\x00")
            if FAMILY_SKIP_TOKENS <= i < FAMILY_PREFIX_TOKENS:
                prefix.update(text + b"\x00")
        header.vocab_hash, header.vocab_prefix_hash, header.n_tokens = full.hexdigest(), prefix.hexdigest(), count
        return count
    if item_type == GGUFValueType.STRING:
        for _ in range(count):
            s.skip(s.unpack("Q"))
        return count
    if item_type == GGUFValueType.ARRAY:
        raise GGUFUnsupported(f"nested arrays are not supported ({key})")
    if count <= 64:  # small arrays (per-layer head counts) are kept
        return [s.unpack(_SCALARS[item_type]) for _ in range(count)]
    s.skip(count * struct.calcsize(_SCALARS[item_type]))
    return count


def _tensor_bytes(n_elements: int, ggml_type: int) -> int:
    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    return n_elements // block * type_size


def _read_header(path: Path) -> _Header:
    with open(path, "rb") as f:
        magic = f.read(4)
        if len(magic) < 4 or struct.unpack("<I", magic)[0] != GGUF_MAGIC:
            raise GGUFInfoError(f"{path}: not a GGUF file")
        version = struct.unpack("<I", f.read(4))[0]
        endian = "<"
        if version & 0xFFFF == 0:  # a big-endian file reads its small version number byte-swapped
            endian, version = ">", struct.unpack(">I", struct.pack("<I", version))[0]
        if version < 2:
            raise GGUFInfoError(f"{path}: GGUF version {version} is too old")
        s = _Stream(f, endian)
        n_tensors, n_kv = s.unpack("Q"), s.unpack("Q")
        header = _Header(kv={}, tensors=[])
        for _ in range(n_kv):
            key = s.string().decode("utf-8", "replace")
            header.kv[key] = _read_value(s, s.unpack("I"), key, header)
        for _ in range(n_tensors):
            name = s.string().decode("utf-8", "replace")
            n_dims = s.unpack("I")
            n_elements = 1
            for _ in range(n_dims):
                n_elements *= s.unpack("Q")
            ggml_type = s.unpack("I")
            s.unpack("Q")  # offset in the data section
            try:
                n_bytes = _tensor_bytes(n_elements, ggml_type)
            except (ValueError, KeyError):
                raise GGUFUnsupported(f"{path}: tensor {name} has a type this gguf package does not know "
                                    f"({ggml_type}); upgrade gguf") from None
            header.tensors.append((name, n_elements, n_bytes, ggml_type))
        return header


def _split_parts(path: Path, kv: dict) -> list[Path]:
    """All files of a split model (model-00001-of-00003.gguf ...), the first one included."""
    n = int(kv.get("split.count", 1) or 1)
    m = _SPLIT_NAME.match(path.name)
    if n <= 1 or not m:
        return [path]
    return [path.with_name(f"{m['stem']}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]


def _file_type_name(kv: dict, tensors: list) -> str:
    ft = kv.get("general.file_type")
    if isinstance(ft, int):
        try:
            return LlamaFileType(ft).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            return f"type {ft}"
    by_type: dict[int, int] = {}  # no file type recorded: the type holding the most bytes
    for _, _, n_bytes, ggml_type in tensors:
        by_type[ggml_type] = by_type.get(ggml_type, 0) + n_bytes
    if not by_type:
        return "unknown"
    return GGMLQuantizationType(max(by_type, key=by_type.get)).name + " (guessed)"


def _per_head_count(value, default: int) -> int:
    if isinstance(value, list):  # some architectures give one count per layer
        return max(value) if value else default
    return int(value) if value else default


def _read_uncached(path: Path) -> ModelInfo:
    if not path.is_file():
        raise GGUFInfoError(f"{path}: not a file")
    header = _read_header(path)
    kv = header.kv
    if kv.get("split.no", 0):
        raise GGUFInfoError(f"{path}: a later part of a split model (its first part is the model)")
    parts = _split_parts(path, kv)
    tensors = list(header.tensors)
    for part in parts[1:]:
        if not part.is_file():
            raise GGUFInfoError(f"{path}: split model part missing: {part.name}")
        tensors += _read_header(part).tensors
    arch = str(kv.get("general.architecture", "unknown"))

    def a(key: str, default=0):
        return kv.get(f"{arch}.{key}", default)

    n_layers = int(a("block_count") or 0)
    n_embd = int(a("embedding_length") or 0)
    n_head = _per_head_count(a("attention.head_count"), 0)
    n_head_kv = _per_head_count(a("attention.head_count_kv"), n_head)
    head_dim = n_embd // n_head if n_head else 0
    layer_bytes = [0] * n_layers
    input_bytes = output_bytes = tied = 0
    has_output = any(t[0] == "output.weight" for t in tensors)
    for name, _, n_bytes, _ in tensors:
        m = _LAYER_TENSOR.match(name)
        if m and int(m[1]) < n_layers:
            layer_bytes[int(m[1])] += n_bytes
        elif name.startswith("token_embd"):
            input_bytes += n_bytes
            tied += n_bytes if name == "token_embd.weight" else 0
        else:
            output_bytes += n_bytes
    if not has_output:
        output_bytes += tied  # llama.cpp duplicates a tied embedding as the output head
    chat_template = kv.get("tokenizer.chat_template")
    return ModelInfo(
        path=str(path),
        file_size=sum(p.stat().st_size for p in parts),
        architecture=arch,
        name=str(kv.get("general.name") or path.stem),
        n_params=sum(t[1] for t in tensors),
        file_type=_file_type_name(kv, tensors),
        context_length=int(a("context_length") or 0),
        n_vocab=header.n_tokens,
        vocab_fingerprint=header.vocab_hash,
        vocab_prefix_fingerprint=header.vocab_prefix_hash,
        tokenizer_model=str(kv.get("tokenizer.ggml.model", "")),
        bos_token_id=kv.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=kv.get("tokenizer.ggml.eos_token_id"),
        has_chat_template=isinstance(chat_template, str) and bool(chat_template.strip()),
        n_layers=n_layers,
        embedding_length=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        key_length=int(a("attention.key_length") or head_dim),
        value_length=int(a("attention.value_length") or head_dim),
        tensor_bytes=sum(t[2] for t in tensors),
        layer_bytes=layer_bytes,
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        tied_embeddings=not has_output,
        model_type=str(kv.get("general.type") or "model"),
    )
