"""llama.cpp RPC: a target node whose layers live on a `quickdraft rpc-worker` (llama.cpp's rpc-server)
gives the target-alone output, token for token.

Skipped, with the reason printed, only when rpc-server cannot be built on this machine.
"""

from __future__ import annotations

import pytest

from conftest import TARGET, rpc_worker_process
from quickdraft import Engine, model_store
from quickdraft.errors import ModelLoadError
from quickdraft.llama_model import LlamaModel
from quickdraft.node.launch import NodeProcess
from quickdraft.server.process import free_port

MAX_TOKENS = 32


@pytest.fixture(scope="module")
def rpc_worker():
    with rpc_worker_process() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def local():
    return Engine.load(TARGET, "none", k=4, threads=1)


def test_target_node_on_an_rpc_worker_gives_the_target_alone_output(rpc_worker, local):
    prompt = local.chat_prompt([{"role": "user", "content": "Name the planets of the solar system."}])
    expected = local.generate(prompt, max_tokens=MAX_TOKENS).tokens
    with NodeProcess(TARGET, "target", extra=["--rpc", rpc_worker], env={"QUICKDRAFT_LLAMA_LOG": "1"}) as node:
        log = "\n".join(node.output)
        assert "offloaded" in log and "layers to GPU" in log  # llama.cpp put the layers on the RPC device
        engine = Engine.load(node.url, draft="ngram", k=4)
        assert engine.target.info["llama_cpp"]["rpc_servers"] == [rpc_worker]
        assert engine.generate(prompt, max_tokens=MAX_TOKENS).tokens == expected
        assert engine.generate(prompt, max_tokens=MAX_TOKENS, draft="none").tokens == expected


def test_an_unreachable_rpc_worker_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="not reachable"):
        LlamaModel(model_store.resolve(TARGET), n_ctx=256, threads=1, rpc_servers=[f"127.0.0.1:{free_port()}"],
                   n_gpu_layers=99)
