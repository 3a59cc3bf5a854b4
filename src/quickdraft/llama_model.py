"""One GGUF model in this process, through llama.cpp's C API (llama-cpp-python's low-level bindings).

`LlamaModel` owns a model, one context and one KV sequence. Its one verb that touches the KV cache is
`evaluate(tokens, n_logits)`: make the cache hold exactly `tokens` and return the logits of the last
`n_logits` positions. It keeps the longest common prefix of what the cache already holds and evaluates
only the rest, so rolling back rejected draft tokens is removing the tail of the sequence
(`llama_memory_seq_rm`), never re-evaluating the prefix. Logits are requested only for the positions the
caller needs: no `n_ctx x n_vocab` buffer (Gemma's vocabulary is 262,144 tokens).

This is the only module that calls llama.cpp, and it imports nothing of quickdraft's but its errors: the
model and its KV cache, re-quantizing a file (`quantize`), rpc-server workers as devices (`rpc_devices`), the
vocabulary as llguidance's tokenizer for grammars (`grammar_tokenizer`), and the build's description
(`system_info`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import socket
import threading
import time
import warnings
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from quickdraft.errors import ContextLengthError, ModelLoadError

_backend_lock = threading.Lock()
_grammar_tokenizer_lock = threading.Lock()
_backend_ready = False
_log_callback = None  # keep a reference: llama.cpp calls it from C
_load_lock = threading.Lock()  # one model load at a time, so the log lines read back are that load's
_load_log: list[tuple[int, str]] | None = None  # while a model loads: llama.cpp's log lines (placement read back from them)


def _llama():
    """Import llama_cpp's bindings once, initialise the backend and silence its logging."""
    global _backend_ready, _log_callback
    import llama_cpp

    with _backend_lock:
        if not _backend_ready:
            verbose = os.environ.get("QUICKDRAFT_LLAMA_LOG", "") not in ("", "0")

            @llama_cpp.llama_log_callback
            def _log(level, text, user_data):  # pragma: no cover - C callback
                if _load_log is not None:
                    _load_log.append((int(level), text.decode("utf-8", "replace")))
                if verbose:
                    print(text.decode("utf-8", "replace"), end="", flush=True)

            _log_callback = _log
            llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _backend_ready = True
    return llama_cpp


def default_threads() -> int:
    """Physical cores, which is what llama.cpp's CPU kernels scale with."""
    import psutil

    return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists (C-speed list compares, then bisect)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] holds, a[:hi] == b[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def system_info() -> dict:
    """What this llama.cpp build is and can do (nodes report it, exactness probes key their cache on it)."""
    lib = _llama()
    from importlib.metadata import version

    return {
        "llama_cpp_python": version("llama-cpp-python"),
        "system_info": lib.llama_print_system_info().decode().strip(),
        "rpc": bool(lib.llama_supports_rpc()),
        "gpu_offload": bool(lib.llama_supports_gpu_offload()),
    }


_GPU_DEVICE_TYPES = (1, 2)  # ggml_backend_dev_type: CPU 0, GPU 1, IGPU 2, ACCEL 3


@lru_cache(maxsize=None)
def _ggml_devices() -> tuple[tuple[str, str, int], ...]:
    """(name, description, ggml_backend_dev_type) of every ggml backend device, as first seen."""
    lib_dir = Path(_llama().__file__).parent / "lib"
    try:
        ggml = ctypes.CDLL(str(lib_dir / "libggml.so"))
        base = ctypes.CDLL(str(lib_dir / "libggml-base.so"))
    except OSError:
        return ()
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    for f in (base.ggml_backend_dev_name, base.ggml_backend_dev_description):
        f.argtypes = [ctypes.c_void_p]
        f.restype = ctypes.c_char_p
    base.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    base.ggml_backend_dev_type.restype = ctypes.c_int
    out = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        out.append((base.ggml_backend_dev_name(dev).decode(), base.ggml_backend_dev_description(dev).decode(),
                    int(base.ggml_backend_dev_type(dev))))
    return tuple(out)


def backend_devices() -> tuple[str, ...]:
    """The ggml backend devices this process can compute on (CPU, GPUs, RPC workers added so far)."""
    return tuple(f"{name}: {description}" for name, description, _ in _ggml_devices())


def gpu_devices() -> tuple[str, ...]:
    """The GPUs this llama.cpp build computes on (CUDA, Metal, ROCm, Vulkan...; RPC workers not counted):
    empty on a CPU-only build, whatever GPUs the machine has."""
    return tuple(f"{name}: {description}" for name, description, kind in _ggml_devices()
                 if kind in _GPU_DEVICE_TYPES and not name.startswith("RPC"))


def quantize(src: Path, out: Path, ftype: int, threads: int | None = None) -> bool:
    """Write `src` re-quantized to llama.cpp file type `ftype` at `out` (llama_model_quantize; blocks)."""
    lib = _llama()
    params = lib.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = threads or default_threads()
    return lib.llama_model_quantize(str(src).encode(), str(out).encode(), params) == 0


@lru_cache(maxsize=None)
def _rpc_libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """libggml-base and libggml-rpc: the very libraries llama-cpp-python loaded (same paths, same handles)."""
    lib = _llama()  # the backend is initialised before devices are made
    if not lib.llama_supports_rpc():
        raise ModelLoadError(
            "this llama-cpp-python was built without RPC; reinstall it with CMAKE_ARGS=-DGGML_RPC=on "
            "(the Makefile does)"
        )
    lib_dir = Path(lib.__file__).parent / "lib"
    base = ctypes.CDLL(str(lib_dir / "libggml-base.so"))
    rpc = ctypes.CDLL(str(lib_dir / "libggml-rpc.so"))
    rpc.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    rpc.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    base.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
    base.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
    base.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    base.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
    return base, rpc


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ModelLoadError(f"an RPC worker is HOST:PORT, got {endpoint!r}")
    return host.strip("[]"), int(port)


def check_reachable(endpoint: str, timeout: float = 3.0) -> None:
    """libggml-rpc aborts the whole process when a worker cannot be reached; find out first, and say so."""
    host, port = parse_endpoint(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise ModelLoadError(
            f"RPC worker {endpoint} is not reachable ({e}); start one with `quickdraft rpc-worker --port {port}`"
        ) from None


def rpc_devices(endpoints: Sequence[str]) -> ctypes.Array:
    """The devices of llama.cpp rpc-server workers (`ggml_backend_rpc_add_server`, what llama.cpp's own
    --rpc flag calls), as the NULL-terminated ggml_backend_dev_t array `llama_model_params.devices` takes."""
    base, rpc = _rpc_libs()
    devices: list[int] = []
    for endpoint in endpoints:
        check_reachable(endpoint)
        reg = rpc.ggml_backend_rpc_add_server(endpoint.encode())
        if not reg:
            raise ModelLoadError(f"RPC worker {endpoint} offers no device")
        for i in range(base.ggml_backend_reg_dev_count(reg)):
            devices.append(base.ggml_backend_reg_dev_get(reg, i))
    return (ctypes.c_void_p * (len(devices) + 1))(*devices, None)


_PROBE_TEXT = (
    "The history of the region spans many centuries, and its people have long traded by sea. In 1847 the "
    "harbour was rebuilt; by 1903, steam ships carried 12,000 tonnes of grain a year to ports abroad. "
    "Q: What does `evaluate(tokens, n_logits)` return? A: the logits of the last n_logits positions. "
    "Meanwhile, in the mountains, farmers grew barley, rye and potatoes, and kept goats for milk and wool.\n"
)

KV_TYPES = {"f32": 0, "f16": 1, "q8_0": 8, "bf16": 30}  # KV cache types by name -> ggml_type

_LOG_ERROR = 4  # GGML_LOG_LEVEL_ERROR
_LAYER_LINE = re.compile(r"layer\s+(\d+) assigned to device ([^,\s]+)")  # load_tensors, at debug level
_BUFFER_LINE = re.compile(r"(\S+) model buffer size =\s*([0-9.]+) MiB")


def _load_model(lib, path: Path, mparams) -> tuple[int | None, list[tuple[int, str]]]:
    """llama_model_load_from_file, and the (level, text) lines llama.cpp logged while loading."""
    global _load_log
    lines: list[tuple[int, str]] = []
    with _load_lock:
        _load_log = lines
        try:
            model = lib.llama_model_load_from_file(str(path).encode(), mparams)
        finally:
            _load_log = None
    return model, lines


def read_placement(lines: Iterable[str]) -> tuple[dict[str, int], dict[str, float]]:
    """From llama.cpp's load log: layers per device ({"CPU": 31} or {"CPU": 10, "CUDA0": 21}; the output layer
    counts as one) and the weights' buffers in MiB ({"CPU_Mapped": 138.1, "CUDA0": 1203.5})."""
    devices: dict[int, str] = {}
    buffers: dict[str, float] = {}
    for text in lines:
        if m := _LAYER_LINE.search(text):
            devices[int(m.group(1))] = m.group(2)
        elif m := _BUFFER_LINE.search(text):
            buffers[m.group(1)] = buffers.get(m.group(1), 0.0) + float(m.group(2))
    counts: dict[str, int] = {}
    for device in devices.values():
        counts[device] = counts.get(device, 0) + 1
    return counts, buffers


class LlamaModel:
    """A GGUF model with one context and one KV sequence."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        n_ctx: int = 4096,
        n_batch: int = 512,
        threads: int | None = None,
        n_gpu_layers: int = 0,
        main_gpu: int | None = None,
        name: str | None = None,
        vocab_only: bool = False,
        rpc_servers: Sequence[str] = (),
        exact: bool = True,
        flash_attn: bool | None = None,
        kv_type: str = "f16",
    ):
        """vocab_only: load the tokenizer alone (no weights, no context; `evaluate` is unavailable).
        n_gpu_layers: the last n layers (the output layer counts as one) go to the GPUs (or RPC workers), as
        llama.cpp's -ngl; negative: every layer; 0: none. main_gpu: those layers on this device alone
        (llama.cpp's --split-mode none --main-gpu); None: spread over every device. A build without a GPU
        backend keeps every layer on the CPU whatever is asked: `offloaded_layers`, `layer_devices` and
        `buffers_mib` say what llama.cpp did.
        rpc_servers: llama.cpp rpc-server workers (HOST:PORT) whose devices take the first n_gpu_layers.
        exact: flash attention off and an F16 KV cache, so a batch of tokens gives the logits decoding them
        one at a time gives (see "Exactness" below); False: llama.cpp's defaults (flash attention where it
        is supported), faster on some machines, equal to one-by-one decoding only up to rounding.
        flash_attn, kv_type: override those two settings (None: off when exact, else llama.cpp's auto; the KV
        cache type is one of KV_TYPES, "q8_0" V needing flash attention); for measurements, not for serving."""
        path = Path(path)
        self.path = path
        self.name = name or path.stem
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as e:  # unreadable (permissions), or deleted since
            raise ModelLoadError(f"cannot read the model file {path}: {e.strerror or e}") from None
        if magic != b"GGUF":
            raise ModelLoadError(f"{path} is not a GGUF file (bad magic bytes)")
        lib = _llama()
        self._lib = lib
        self.threads = threads or default_threads()

        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        if main_gpu is not None:
            mparams.split_mode = 0  # LLAMA_SPLIT_MODE_NONE: every offloaded layer on devices[main_gpu]
            mparams.main_gpu = main_gpu
        self.n_gpu_layers, self.main_gpu = n_gpu_layers, main_gpu  # what was asked
        mparams.vocab_only = vocab_only
        self.rpc_servers = tuple(rpc_servers)
        if self.rpc_servers:
            self._devices = rpc_devices(self.rpc_servers)  # NULL-terminated; must outlive the model
            mparams.devices = ctypes.cast(self._devices, ctypes.c_void_p)
        self._model, load_log = _load_model(lib, path, mparams)
        if not self._model:
            errors = "; ".join(text.strip() for level, text in load_log if level == _LOG_ERROR)
            raise ModelLoadError(f"llama.cpp could not load {path}: {errors or 'corrupt or unsupported GGUF'}")
        # what llama.cpp did: the device of every layer (the output layer last) and the weights' buffers
        self.n_layer = int(lib.llama_model_n_layer(self._model))
        self.layer_devices, self.buffers_mib = read_placement(text for _, text in load_log)
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(lib.llama_model_n_ctx_train(self._model))
        if vocab_only:  # a tokenizer: no context, no KV cache
            self.n_ctx = min(n_ctx, self.n_ctx_train) if self.n_ctx_train > 0 else n_ctx
            self._ctx = self._batch = None
            self.tokens = []
            self._piece_cache = {}
            self._eog = {t for t in range(self.n_vocab) if lib.llama_vocab_is_eog(self._vocab, t)}
            return

        self.n_ctx = min(n_ctx, self.n_ctx_train) if self.n_ctx_train > 0 else n_ctx
        self.n_batch = min(n_batch, self.n_ctx)
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = self.n_ctx
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = self.n_batch
        cparams.n_seq_max = 1
        cparams.n_threads = self.threads
        cparams.n_threads_batch = self.threads
        cparams.no_perf = True
        # Sliding-window models (Gemma 3) prune KV cells that fall out of the window; rolling back rejected
        # draft tokens would then need cells that are gone. A full-size SWA cache keeps them.
        cparams.swa_full = True
        # Exactness: verifying k+1 tokens in one batch must give the logits that decoding them one at a time
        # gives, and those must be llama.cpp's own (llama_cpp.Llama: flash attention off, F16 KV cache).
        # llama.cpp's CPU flash attention picks its kernel by batch shape (a KV-split kernel for one query
        # once the cache holds 512 cells, a tiled kernel for many queries), and those round differently;
        # without it, on a build without llamafile's sgemm (used for batches of 2+ only), batches reproduce
        # single tokens bit for bit except where weights are repacked (Q4_K: gemm for groups of 4 rows).
        # Measured: scripts/batch_exactness.py, docs/exactness.md; the rest is probed (quickdraft.exactness).
        self.exact = exact
        if flash_attn is None and exact:
            flash_attn = False
        # LLAMA_FLASH_ATTN_TYPE_ AUTO (-1, llama.cpp's default) / DISABLED (0) / ENABLED (1)
        cparams.flash_attn_type = -1 if flash_attn is None else int(flash_attn)
        self.flash_attn = flash_attn  # None: llama.cpp decides
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {sorted(KV_TYPES)}, got {kv_type!r}")
        self.kv_type = kv_type
        cparams.type_k = cparams.type_v = KV_TYPES[kv_type]  # f16: llama.cpp's default
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            lib.llama_model_free(self._model)
            self._model = None
            raise ModelLoadError(f"llama.cpp could not create a context for {path} (n_ctx={self.n_ctx})")
        self.n_ctx = int(lib.llama_n_ctx(self._ctx))
        self._memory = lib.llama_get_memory(self._ctx)

        # One batch, reused for every decode; numpy views onto its arrays make filling it cheap.
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        b = self._batch
        self._b_token = np.ctypeslib.as_array(b.token, shape=(self.n_batch,))
        self._b_pos = np.ctypeslib.as_array(b.pos, shape=(self.n_batch,))
        self._b_logits = np.ctypeslib.as_array(b.logits, shape=(self.n_batch,))
        np.ctypeslib.as_array(b.n_seq_id, shape=(self.n_batch,))[:] = 1
        for i in range(self.n_batch):
            b.seq_id[i][0] = 0

        self.tokens: list[int] = []  # what the KV cache holds, in order
        self._piece_cache: dict[int, bytes] = {}
        self._eog = {t for t in range(self.n_vocab) if lib.llama_vocab_is_eog(self._vocab, t)}
        self.eval_calls = 0
        self.evaluated_tokens = 0
        self.decode_seconds = 0.0  # time spent inside llama_decode: the model's share of a request

    # ---- placement and metadata -----------------------------------------------------------------------
    @property
    def offloaded_layers(self) -> int:
        """Layers llama.cpp put on a device other than the CPU (a GPU or an RPC worker), the output layer
        included: n_layer + 1 when everything is offloaded, 0 on a CPU-only build whatever was asked."""
        return sum(n for device, n in self.layer_devices.items() if device != "CPU")

    def metadata(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = self._lib.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    @cached_property
    def chat_template(self) -> str | None:
        return self.metadata("tokenizer.chat_template")

    @cached_property
    def architecture(self) -> str:
        return self.metadata("general.architecture") or "unknown"

    @cached_property
    def description(self) -> str:
        buf = ctypes.create_string_buffer(256)
        self._lib.llama_model_desc(self._model, buf, len(buf))
        return buf.value.decode()

    @cached_property
    def size_bytes(self) -> int:
        return int(self._lib.llama_model_size(self._model))

    @cached_property
    def vocab_fingerprint(self) -> str:
        """sha256 over every token's text, in id order: equal fingerprints mean the same vocabulary."""
        h = hashlib.sha256()
        get_text = self._lib.llama_vocab_get_text
        for t in range(self.n_vocab):
            h.update(get_text(self._vocab, t) or b"")
            h.update(b"\x00")
        return h.hexdigest()

    @property
    def bos_token(self) -> int | None:
        t = int(self._lib.llama_vocab_bos(self._vocab))
        return t if t >= 0 else None

    @property
    def eos_token(self) -> int | None:
        t = int(self._lib.llama_vocab_eos(self._vocab))
        return t if t >= 0 else None

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    @cached_property
    def fim_tokens(self) -> dict[str, int]:
        """The fill-in-the-middle tokens llama.cpp knows for this vocabulary, by role (pre, suf, mid, rep,
        sep), only those it has: the server's /infill builds its prompt with them, as llama-server does."""
        lib, found = self._lib, {}
        for role in ("pre", "suf", "mid", "rep", "sep"):
            token = int(getattr(lib, f"llama_vocab_fim_{role}")(self._vocab))
            if token >= 0:
                found[role] = token
        return found

    @cached_property
    def adds_bos(self) -> bool:
        """Whether tokenizing with special tokens puts a BOS first (the GGUF's add_bos_token)."""
        return bool(self._lib.llama_vocab_get_add_bos(self._vocab))

    def grammar_tokenizer(self):
        """The vocabulary as llguidance's tokenizer, for grammar masks (quickdraft.constraint); its end tokens
        are the end-of-generation tokens. Built on first use (about 2 s for Gemma's 262,144 tokens) and kept."""
        with _grammar_tokenizer_lock:
            if getattr(self, "_grammar_tokenizer", None) is None:
                self._require_open()
                from llguidance.llamacpp import lltokenizer_from_vocab

                with warnings.catch_warnings():  # it calls a deprecated alias once per token
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self._grammar_tokenizer = lltokenizer_from_vocab(self._vocab, eos_token=sorted(self._eog))
            return self._grammar_tokenizer

    # ---- text <-> tokens ------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        self._require_open()
        data = text.encode("utf-8")
        n_max = len(data) + 16
        buf = (ctypes.c_int32 * n_max)()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:
            n_max = -n
            buf = (ctypes.c_int32 * n_max)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_special, parse_special)
        return list(buf[:n])

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token renders as in generated text (control tokens render as nothing)."""
        piece = self._piece_cache.get(token)
        if piece is None:
            self._require_open()
            buf = ctypes.create_string_buffer(64)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = buf.raw[:n]
            self._piece_cache[token] = piece
        return piece

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", "replace")

    def token_text(self, token: int) -> str:
        """The vocabulary entry of a token (special tokens included), for display."""
        self._require_open()
        return (self._lib.llama_vocab_get_text(self._vocab, token) or b"").decode("utf-8", "replace")

    # ---- the KV cache -----------------------------------------------------------------------------------
    def evaluate(self, tokens: Sequence[int], n_logits: int = 1) -> np.ndarray:
        """Make the KV cache hold exactly `tokens`; return the logits of the last `n_logits` positions.

        The returned array (n_logits x n_vocab, float32) is a view into llama.cpp's buffer, valid until the
        next call on this model.
        """
        self._require_open(context=True)
        n = len(tokens)
        if n_logits < 1 or n_logits > n:
            raise ValueError(f"n_logits must be in [1, {n}], got {n_logits}")
        if n > self.n_ctx:
            raise ContextLengthError(
                f"{n} tokens do not fit in the context of {self.name} ({self.n_ctx} tokens)"
            )
        if n_logits > self.n_batch:
            raise ValueError(f"n_logits={n_logits} exceeds the batch size {self.n_batch}")
        keep = min(common_prefix_len(self.tokens, tokens), n - n_logits)
        if keep < len(self.tokens):
            self.truncate(keep)
            keep = len(self.tokens)  # a cache that could not drop a tail was cleared: start from there
        new = tokens[keep:]
        # Chunks of n_batch from the first new token, as llama.cpp's own prompt processing (and
        # llama_cpp.Llama.eval) splits a prompt: where a big batch rounds differently from a smaller one,
        # the same split gives the same KV cache. The last chunk must hold every position whose logits are
        # asked for; where it would be shorter, the chunk before it gives it those positions.
        bounds = list(range(0, len(new), self.n_batch)) + [len(new)]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < n_logits:
            bounds[-2] = len(new) - n_logits
        for start, end in zip(bounds, bounds[1:]):
            chunk = new[start:end]
            self._decode(chunk, keep + start, n_logits if end == len(new) else 0)
            self.tokens.extend(chunk)
        ptr = self._lib.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_logits, self.n_vocab))

    def truncate(self, n_keep: int) -> None:
        """Drop every cached position from n_keep on (a cache that cannot remove a tail is cleared whole:
        `tokens` says what it holds afterwards)."""
        if n_keep >= len(self.tokens):
            return
        self._require_open(context=True)
        ok = self._lib.llama_memory_seq_rm(self._memory, 0, n_keep, -1)
        if not ok:  # a cache that cannot remove a tail (recurrent models): start over
            self._lib.llama_memory_clear(self._memory, True)
            del self.tokens[:]
            return
        del self.tokens[n_keep:]

    def reset(self) -> None:
        self._require_open(context=True)
        self._lib.llama_memory_clear(self._memory, True)
        self.tokens = []

    def probe_lengths(self, limit: int, kv_lens: Sequence[int]) -> tuple[int, list[int]]:
        """The batch limit and the prefix lengths `max_exact_batch` really tests in this context: a prefix
        whose batches would not fit n_ctx is left out (a small context tests less than a large one, so what
        remembers a result must key on these, not on what was asked)."""
        limit = max(1, min(limit, self.n_batch, self.n_ctx - 1))
        return limit, sorted({n for n in kv_lens if n >= 1 and n + limit <= self.n_ctx}) or [1]

    def max_exact_batch(self, limit: int, kv_lens: Sequence[int] = (24,), text: str | None = None) -> int:
        """The largest batch (<= limit) such that every batch up to it, after a prefix of each of `kv_lens`
        tokens, gives the logits, bit for bit, of decoding its tokens one at a time on this machine.
        Speculative verification is lossless only up to that batch size: some llama.cpp kernels (llamafile's
        sgemm, repacked K-quant gemm) round differently for larger batches. The prefixes are read as a prompt
        is (`evaluate`), each extending the one before; the cache is emptied afterwards. Only the prefixes
        that fit the context are tested (`probe_lengths`)."""
        limit, kv_lens = self.probe_lengths(limit, kv_lens)
        tokens = self._probe_tokens(max(kv_lens) + limit, text)
        exact = limit
        self.reset()
        for n in kv_lens:
            if exact < 2:
                break
            self.evaluate(tokens[:n], 1)
            single = [self.evaluate(tokens[: n + i + 1], 1)[0].copy() for i in range(exact)]
            for b in range(2, exact + 1):
                batch = self.evaluate(tokens[: n + b], b)  # drops the tail back to n, then one batch
                if not all(np.array_equal(batch[i], single[i]) for i in range(b)):
                    exact = b - 1
                    break
        self.reset()
        return exact

    def prompt_reuse_exact(self, prefix: int, suffix: int, *, steps: int = 2, answer: int = 4,
                           text: str | None = None) -> bool:
        """Whether a prompt read after a cached prefix leaves, bit for bit, what reading it afresh leaves.

        A fresh read splits a prompt into chunks of n_batch from its first token; after a cached prefix (the
        previous request's prompt and answer) `evaluate` reads only the rest, in chunks of n_batch from the
        first new token: other batch shapes for the same positions, which some kernels round differently.
        Compared: reading prefix + suffix tokens afresh, against reading `prefix` tokens (the last `answer`
        of them one at a time, as a generated answer is) and then the `suffix` in one batch (up to n_batch
        tokens); the logits of the last prompt position (they choose the first generated token) and of
        `steps` one-token steps after it (they read the KV cache the prompt left) must be equal. The cache is
        emptied afterwards."""
        n = prefix + suffix
        tokens = self._probe_tokens(n + steps, text)
        answer = max(0, min(answer, prefix - 1))

        def read_then_step() -> list[np.ndarray]:
            logits = [self.evaluate(tokens[:n], 1)[0].copy()]  # after `prefix` tokens: the suffix, one batch
            return logits + [self.evaluate(tokens[: n + i + 1], 1)[0].copy() for i in range(steps)]

        self.reset()
        fresh = read_then_step()
        self.reset()
        self.evaluate(tokens[: prefix - answer], 1)
        for end in range(prefix - answer + 1, prefix + 1):
            self.evaluate(tokens[:end], 1)
        reused = read_then_step()
        self.reset()
        return all(np.array_equal(a, b) for a, b in zip(fresh, reused))

    def _probe_tokens(self, n: int, text: str | None) -> list[int]:
        """At least n tokens of the probes' text (repeated as needed)."""
        tokens = self.tokenize(text or _PROBE_TEXT)
        while len(tokens) < n:
            tokens += tokens
        return tokens

    def _decode(self, chunk: Sequence[int], pos0: int, n_logits: int) -> None:
        m = len(chunk)
        self._b_token[:m] = chunk
        self._b_pos[:m] = np.arange(pos0, pos0 + m)
        self._b_logits[:m] = 0
        if n_logits:
            self._b_logits[m - n_logits : m] = 1
        self._batch.n_tokens = m
        t0 = time.perf_counter()
        rc = self._lib.llama_decode(self._ctx, self._batch)
        self.decode_seconds += time.perf_counter() - t0
        self.eval_calls += 1
        self.evaluated_tokens += m
        if rc != 0:
            # the cache may hold part of the batch now: resynchronise from what llama.cpp reports
            pos_max = int(self._lib.llama_memory_seq_pos_max(self._memory, 0))
            del self.tokens[pos_max + 1 :]
            raise RuntimeError(f"llama_decode failed with code {rc} on {self.name} ({m} tokens at {pos0})")

    # ---- lifetime -------------------------------------------------------------------------------------
    def _require_open(self, context: bool = False) -> None:
        """A clear error for a call on a closed model (or a tokenizer's missing context), where llama.cpp
        would read freed or no memory and crash the process."""
        if not getattr(self, "_model", None) or (context and not getattr(self, "_ctx", None)):
            what = "closed" if not getattr(self, "_model", None) else "a tokenizer without a context"
            raise RuntimeError(f"the model {self.name} is {what}: it cannot evaluate or tokenize")

    def close(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        if getattr(self, "_batch", None) is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            lib.llama_free(self._ctx)
            self._ctx = None
        self._grammar_tokenizer = None  # it points into the vocabulary freed below
        self._vocab = self._memory = None
        if getattr(self, "_model", None):
            lib.llama_model_free(self._model)
            self._model = None

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"LlamaModel({self.name!r}, n_vocab={self.n_vocab}, n_ctx={self.n_ctx}, threads={self.threads})"
