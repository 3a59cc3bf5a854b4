"""The one place that turns model specs into the engine's parts: a target, drafters, a tokenizer.

A spec is a model name (`quickdraft models`), a path to a .gguf file, or node://HOST:PORT (a `quickdraft
node`, quickdraft.node). `Engine.load`, the bench and `quickdraft node` all build through here, so a target
is always loaded with the same settings and capped to the same exact K.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from quickdraft import model_store
from quickdraft.drafters import Drafter, ModelDrafter, NgramDrafter, NoDrafter
from quickdraft.errors import IncompatibleVocabError, ModelLoadError
from quickdraft.exactness import exact_max_k, prompt_cache_exact
from quickdraft.llama_model import LlamaModel
from quickdraft.node import is_node_url, open_drafter, open_target
from quickdraft.policy import MAX_K
from quickdraft.target import LocalTarget, Target

log = logging.getLogger("quickdraft")


def open_model(spec: str, *, n_ctx: int = 4096, threads: int | None = None, exact: bool = True,
               rpc_servers: Sequence[str] = (), gpu_layers: int = 0, main_gpu: int | None = None) -> LlamaModel:
    """gpu_layers, main_gpu: llama.cpp's -ngl (negative: all) and --main-gpu (quickdraft.placement)."""
    if rpc_servers:
        from quickdraft.node.rpc import check_workers

        check_workers(rpc_servers)  # another llama.cpp version's worker would abort this process in llama.cpp
    name = Path(spec).stem if str(spec).endswith(".gguf") else str(spec)  # a path: its file name
    path = model_store.resolve(spec)
    check_gguf(path)
    model = LlamaModel(path, n_ctx=n_ctx, threads=threads, name=name, exact=exact,
                       rpc_servers=rpc_servers, n_gpu_layers=gpu_layers, main_gpu=main_gpu)
    report_placement(model)
    return model


def check_gguf(path: Path) -> None:
    """Refuse a file that is not a whole GGUF model before llama.cpp reads it: a damaged header or a file
    shorter than its tensors (a copy cut short) is a ModelLoadError naming the cause and what to do, where
    llama.cpp's own refusal names a tensor out of bounds. Reads the header only (gguf_info, cached), so a
    swap can run it before it closes the running target."""
    from quickdraft.gguf_info import GGUFInfoError, GGUFUnsupported, read_info

    try:
        info = read_info(path)
    except GGUFUnsupported:  # newer than this reader: llama.cpp decides
        return
    except GGUFInfoError as e:
        raise ModelLoadError(f"cannot load {path}: {str(e).replace(f'{path}: ', '')}") from None
    if info.file_size < info.tensor_bytes:
        raise ModelLoadError(f"cannot load {path}: the file is truncated ({info.file_size} bytes; its tensors "
                             f"alone take {info.tensor_bytes}): copy or download it again")


def check_model_file(spec: str) -> None:
    """Raise ModelLoadError if `spec` names a local model that cannot load (missing, unreadable, damaged),
    without loading it: a swap checks the new target so before it closes the running one. A node:// target,
    `auto` and a precision copy not made yet are left to the load."""
    if is_node_url(spec) or spec == "auto":
        return
    try:
        path = model_store.resolve(spec, progress=False, derive_missing=False)
    except model_store.NotMadeYet:
        return
    check_gguf(path)


def describe_placement(model: LlamaModel) -> str:
    """Where llama.cpp put the model's layers: "12/31 layers on CUDA0, 19 on CPU (GPU layers asked: 12; 4 threads)"."""
    total = sum(model.layer_devices.values())
    parts = [f"{n}/{total} layers on {device}" if i == 0 else f"{n} on {device}"
             for i, (device, n) in enumerate(sorted(model.layer_devices.items(), key=lambda kv: kv[0] == "CPU"))]
    asked = "all" if model.n_gpu_layers < 0 else str(model.n_gpu_layers)
    on = f", GPU {model.main_gpu}" if model.main_gpu is not None else ""
    return f"{', '.join(parts)} (GPU layers asked: {asked}{on}; {model.threads} threads)"


def report_placement(model: LlamaModel) -> None:
    """Log where the layers went; warn when GPU layers were asked for and llama.cpp had nowhere to put them."""
    if model.n_gpu_layers != 0 and model.layer_devices and model.offloaded_layers == 0:
        log.warning("%s: GPU layers asked for, but this llama.cpp build has no GPU backend: every layer is in RAM "
                    "(docs/gpu.md: `make install` builds for the GPU it finds)", model.name)
    log.info("%s: %s", model.name, describe_placement(model))


def local_target(model: LlamaModel, *, exact: bool = True) -> LocalTarget:
    """The model as a target. exact: K capped to what this machine verifies bit-exactly, and no prompt cache
    for a model whose batches round differently (its first token would differ after a cached prefix), nor
    where the probe found a prompt read after a cached prefix rounding otherwise than a fresh read."""
    if not exact:
        return LocalTarget(model, max_k=MAX_K)
    max_k = exact_max_k(model, MAX_K)
    keep_cache = max_k == MAX_K and prompt_cache_exact(model, MAX_K)
    return LocalTarget(model, max_k=max_k, fresh_prefill=not keep_cache)


def load_target(spec: str, *, n_ctx: int = 4096, threads: int | None = None, exact: bool = True,
                rpc_servers: Sequence[str] = (), gpu_layers: int | None = None,
                main_gpu: int | None = None) -> tuple[Target, LlamaModel]:
    """(target, tokenizer). A node target verifies on its node, which measured its own exact K; it is
    tokenized here with its vocabulary, loaded without weights. rpc_servers: llama.cpp rpc-server workers
    holding a local target's layers (gpu_layers of them; default: all), as `quickdraft node --rpc` does."""
    if is_node_url(spec):
        if rpc_servers:
            raise ValueError("RPC workers hold a local target's layers; a node:// target takes them on its node "
                             "(quickdraft node --rpc)")
        target, tokenizer = open_target(spec)
        if not exact:
            target.max_k = MAX_K
        return target, tokenizer
    if gpu_layers is None:
        gpu_layers = 999 if rpc_servers else 0  # with RPC workers: every layer goes to them
    model = open_model(spec, n_ctx=n_ctx, threads=threads, exact=exact, rpc_servers=rpc_servers,
                       gpu_layers=gpu_layers, main_gpu=main_gpu)
    return local_target(model, exact=exact), model


def check_vocab(target: LlamaModel, draft: LlamaModel) -> None:
    """Refuse a draft whose vocabulary is not the target's: its token ids would mean other strings."""
    if target.n_vocab != draft.n_vocab or target.vocab_fingerprint != draft.vocab_fingerprint:
        raise IncompatibleVocabError(
            f"draft model {draft.name} ({draft.n_vocab} tokens) does not share the vocabulary of target "
            f"model {target.name} ({target.n_vocab} tokens); pick a draft from the target's model family "
            "or use --draft ngram"
        )


def load_drafter(spec: str, tokenizer: LlamaModel, *, n_ctx: int = 4096, threads: int | None = None,
                 exact: bool = True, gpu_layers: int = 0, main_gpu: int | None = None) -> Drafter:
    """A draft model (name, path, or node://) that must share the target's vocabulary."""
    if is_node_url(spec):
        return open_drafter(spec, vocab_fingerprint=tokenizer.vocab_fingerprint)
    model = open_model(spec, n_ctx=n_ctx, threads=threads, exact=exact, gpu_layers=gpu_layers, main_gpu=main_gpu)
    check_vocab(tokenizer, model)
    return ModelDrafter(model)


def standard_drafters(ngram_max: int = 4, ngram_min: int = 1) -> dict[str, Drafter]:
    """The drafters every engine has: none (the target alone) and ngram (prompt lookup)."""
    return {"none": NoDrafter(), "ngram": NgramDrafter(ngram_max, ngram_min)}
