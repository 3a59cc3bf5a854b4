"""Shared fixtures: real models (never mocks), loaded once per test session."""

from __future__ import annotations

import json
from importlib import resources

import pytest

TARGET = "gemma-3-270m-q8_0"  # bit-exact batched vs one-by-one on llama.cpp's CPU kernels (see README)
DRAFT = "gemma-3-270m"  # Q4_K_M


def load_prompts(name: str = "spec_bench.jsonl") -> list[dict]:
    text = resources.files("quickdraft").joinpath("data", "prompts", name).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def engine():
    from quickdraft import Engine

    return Engine.load(TARGET, DRAFT, k=4, threads=2)


@pytest.fixture(scope="session")
def smol_engine():
    from quickdraft import Engine

    return Engine.load("smollm2-135m", "ngram", k=4, threads=2)
