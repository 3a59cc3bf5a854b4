"""How often does this llama-cpp-python build give the same greedy output as another build (e.g. a stock one)?

    .venv/bin/python scripts/stock_fidelity.py run MODEL.gguf ours.json         # quickdraft's build
    OTHER_VENV/bin/python scripts/stock_fidelity.py run MODEL.gguf stock.json   # e.g. a stock build
    python3 scripts/stock_fidelity.py compare stock.json ours.json

`run` uses llama_cpp alone (no quickdraft import): `llama_cpp.Llama(..., flash_attn=False)`, F16 KV cache,
2 threads, greedy, 64 tokens, on the first Spec-Bench question of each of 12 categories (shared/prompts):
through the GGUF's chat template when it has one, else as "Question: ...\\nAnswer:" (a base model). `compare`
prints how many of the outputs are equal.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PROMPTS = Path(__file__).resolve().parents[2] / "shared" / "prompts" / "spec_bench.jsonl"


def questions(n: int = 12) -> list[str]:
    seen: set[str] = set()
    picked = []
    for line in PROMPTS.read_text().splitlines():
        row = json.loads(line)
        if row["category"] not in seen:
            seen.add(row["category"])
            picked.append(row["turns"][0])
        if len(picked) == n:
            break
    return picked


def run(model: str, out: str) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model, n_ctx=4096, n_threads=2, flash_attn=False, verbose=False)
    outputs = []
    for q in questions():
        if llm.metadata.get("tokenizer.chat_template"):
            r = llm.create_chat_completion(messages=[{"role": "user", "content": q}], max_tokens=64, temperature=0)
            outputs.append(r["choices"][0]["message"]["content"])
        else:
            r = llm.create_completion(f"Question: {q}\nAnswer:", max_tokens=64, temperature=0)
            outputs.append(r["choices"][0]["text"])
    Path(out).write_text(json.dumps({"llama_cpp_python": llama_cpp.__version__, "outputs": outputs}))


def compare(a: str, b: str) -> None:
    x, y = (json.loads(Path(f).read_text()) for f in (a, b))
    same = sum(p == q for p, q in zip(x["outputs"], y["outputs"]))
    print(f"{x['llama_cpp_python']} vs {y['llama_cpp_python']}: {same}/{len(x['outputs'])} outputs equal")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] in ("run", "compare"):
        (run if sys.argv[1] == "run" else compare)(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
