"""Shared fixtures: real models (never mocks), loaded once per test session."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager
from importlib import resources

import pytest

TARGET = "gemma-3-270m-q8_0"  # bit-exact batched vs one-by-one on llama.cpp's CPU kernels (see README)
DRAFT = "gemma-3-270m"  # Q4_K_M


def load_prompts(name: str = "spec_bench.jsonl") -> list[dict]:
    text = resources.files("quickdraft").joinpath("data", "prompts", name).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@contextmanager
def rpc_worker_process():
    """`quickdraft rpc-worker` (llama.cpp's rpc-server) on a free loopback port, one thread: its HOST:PORT.
    Skips the test where rpc-server cannot be built. Each module starts its own: rpc-server serves one client
    at a time, and a process that used it may still hold its connection."""
    from quickdraft.llama_build import BuildError
    from quickdraft.node.rpc import wait_for_port, worker_binary
    from quickdraft.server.process import free_port

    try:
        worker_binary()  # found, or built now with its progress printed
    except BuildError as e:
        print(f"SKIP: llama.cpp's rpc-server cannot be built here: {e}")
        pytest.skip(f"rpc-server cannot be built on this machine: {e}")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "quickdraft", "rpc-worker", "--port", str(port), "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, timeout=60)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def engine():
    from quickdraft import Engine

    return Engine.load(TARGET, DRAFT, k=4, threads=2)


@pytest.fixture(scope="session")
def smol_engine():
    from quickdraft import Engine

    return Engine.load("smollm2-135m", "ngram", k=4, threads=2)


@pytest.fixture(scope="session")
def smol_server():
    """A real `quickdraft serve` of the demo chat model smollm2-135m with n-gram drafting (the HTTP clients'
    tests share it)."""
    from quickdraft.server.process import ServerProcess

    with ServerProcess("--target", "smollm2-135m", "--draft", "ngram") as s:
        yield s


WEATHER_TOOL = {  # a function tool in OpenAI's shape, with a schema a grammar can enforce
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
