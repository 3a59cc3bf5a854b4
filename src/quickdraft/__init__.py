"""quickdraft: lossless speculative decoding for GGUF models, on llama.cpp.

The public API in one screen:

    from quickdraft import Engine
    engine = Engine.load(target="gemma-3-270m-q8_0", draft="gemma-3-270m")
    result = engine.generate("The capital of France is", max_tokens=32)
    print(result.text, result.stats.acceptance_rate)
    for piece in engine.stream("Once upon a time", max_tokens=64):
        print(piece.text, end="", flush=True)
"""

from quickdraft.errors import (
    ContextLengthError,
    IncompatibleVocabError,
    InvalidRequestError,
    ModelLoadError,
    QuickdraftError,
)
from quickdraft.sampling import SamplingParams

__version__ = "0.1.0"

__all__ = [
    "ContextLengthError",
    "Engine",
    "IncompatibleVocabError",
    "InvalidRequestError",
    "ModelLoadError",
    "QuickdraftError",
    "SamplingParams",
    "__version__",
]


def __getattr__(name):  # lazy: importing quickdraft must not load llama.cpp
    if name == "Engine":
        from quickdraft.engine import Engine

        return Engine
    raise AttributeError(name)
