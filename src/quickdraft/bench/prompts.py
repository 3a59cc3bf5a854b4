"""The prompts a bench runs: a suite shipped in the package, or a JSONL file, then a selection.

Every prompt becomes a conversation of user turns. Rows may be
- Spec-Bench: {"question_id", "category", "turns": [...]} (MT-Bench rows have two turns);
- HumanEval: {"task_id", "prompt"}: a function to complete, asked as one user turn (category "humaneval");
- plain: {"prompt": "..."} or {"turns": [...]}, with optional "id" and "category".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

from quickdraft.errors import QuickdraftError

SUITES = {"spec-bench": "spec_bench.jsonl", "humaneval": "humaneval.jsonl"}
HUMANEVAL_REQUEST = (
    "Complete the following Python function. Reply with the whole function in one Python code block.\n\n"
    "```python\n{code}```"
)


class PromptSetError(QuickdraftError):
    """A prompt file or suite that cannot be read, or a selection that leaves nothing."""


@dataclass(frozen=True)
class BenchPrompt:
    id: str
    category: str
    turns: tuple[str, ...]


def parse_row(row: dict, index: int, source: str) -> BenchPrompt:
    where = f"{source}, row {index + 1}"
    if not isinstance(row, dict):
        raise PromptSetError(f"{where}: expected a JSON object")
    if "task_id" in row and "prompt" in row:  # HumanEval
        return BenchPrompt(str(row["task_id"]), row.get("category", "humaneval"),
                           (HUMANEVAL_REQUEST.format(code=row["prompt"]),))
    if "turns" in row:
        turns = row["turns"]
    elif "prompt" in row:
        turns = [row["prompt"]]
    else:
        raise PromptSetError(f"{where}: needs 'turns' (a list of strings) or 'prompt' (a string)")
    if not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise PromptSetError(f"{where}: turns must be non-empty strings")
    pid = row.get("id", row.get("question_id", index + 1))
    return BenchPrompt(str(pid), str(row.get("category", "all")), tuple(turns))


def parse_jsonl(text: str, source: str) -> list[BenchPrompt]:
    prompts = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptSetError(f"{source}, line {i + 1}: not JSON ({e.msg})") from None
        prompts.append(parse_row(row, len(prompts), source))
    if not prompts:
        raise PromptSetError(f"{source} holds no prompts")
    return prompts


def load_suite(name: str) -> list[BenchPrompt]:
    if name not in SUITES:
        raise PromptSetError(f"unknown suite {name!r}; suites: {', '.join(SUITES)}")
    text = resources.files("quickdraft").joinpath("data", "prompts", SUITES[name]).read_text(encoding="utf-8")
    return parse_jsonl(text, name)


def load_file(path: str | Path) -> list[BenchPrompt]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise PromptSetError(f"cannot read prompt file {path}: {e.strerror}") from None
    return parse_jsonl(text, str(path))


def select(
    prompts: Sequence[BenchPrompt], categories: Iterable[str] | None = None, per_category: int | None = None
) -> list[BenchPrompt]:
    """The first `per_category` prompts of each wanted category, in file order."""
    wanted = list(categories) if categories else None
    if wanted:
        unknown = sorted(set(wanted) - {p.category for p in prompts})
        if unknown:
            known = sorted({p.category for p in prompts})
            raise PromptSetError(f"no prompts in categories {unknown}; categories here: {', '.join(known)}")
    taken: dict[str, int] = {}
    out = []
    for p in prompts:
        if wanted and p.category not in wanted:
            continue
        if per_category is not None and taken.get(p.category, 0) >= per_category:
            continue
        taken[p.category] = taken.get(p.category, 0) + 1
        out.append(p)
    if not out:
        raise PromptSetError("the selection leaves no prompts")
    return out
