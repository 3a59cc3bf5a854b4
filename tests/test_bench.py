"""`quickdraft bench`: its output files and its checks, end to end on a tiny prompt set (real models), and
its pieces on hand-made runs. Nothing here asserts a timing."""

from __future__ import annotations

import json

import httpx
import pytest

from conftest import TARGET
from quickdraft.bench import prompts as prompt_sets
from quickdraft.bench.compare import find_mismatches, first_difference, first_difference_in_common
from quickdraft.bench.llamacpp import generated_text, parse_report
from quickdraft.bench.prompts import BenchPrompt, PromptSetError
from quickdraft.bench.records import Config, Run
from quickdraft.bench.session import cpu_features
from quickdraft.bench.report import BenchResult, agreement, markdown
from quickdraft.bench.runner import run_bench
from quickdraft.bench.server import ServerBackend
from quickdraft.bench.session import BenchSettings, local_configs, run, write_outputs
from quickdraft.bench.summary import OVERALL, complete_turns, summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = [
    {"id": "copy", "category": "summarization",
     "turns": ["Repeat this sentence exactly: the quick brown fox jumps over the lazy dog."]},
    {"id": "chat", "category": "writing",
     "turns": ["Write one short sentence about the sea.", "Now say it again in other words."]},
]


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    prompts = out / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in TINY) + "\n")
    settings = BenchSettings(target=TARGET, drafts=["ngram", "auto"], ks=[2], prompts_file=str(prompts),
                             max_tokens=12, out=out / "results", threads=2, warmup=False,
                             command="quickdraft bench (test)")
    return run(settings), out / "results"


# ---- end to end ------------------------------------------------------------------------------------------
def test_end_to_end_writes_results_report_and_charts(tiny_bench):
    result, out = tiny_bench
    data = json.loads((out / "results.json").read_text())
    names = [c["name"] for c in data["configs"]]
    assert names == ["target alone", "ngram k=2", "auto (ngram)"]
    assert len(data["runs"]) == 3 * len(names)  # 3 turns, every configuration
    assert {r["config"] for r in data["runs"]} == set(names)
    assert all(r["error"] is None and r["completion_tokens"] > 0 for r in data["runs"])
    assert set(data["summary"]["ngram k=2"]) == {"summarization", "writing", OVERALL}
    assert data["summary"]["target alone"][OVERALL]["speedup"] is None
    assert data["summary"]["ngram k=2"][OVERALL]["speedup"] > 0
    assert data["summary"]["auto (ngram)"][OVERALL]["choices"]  # auto's decisions are recorded
    assert data["greedy_checked"] is True
    assert data["settings"]["turns"] == 3 and data["machine"]["physical_cores"] >= 1

    report = (out / "report.md").read_text()
    for name in names:
        assert f"| {name} |" in report
    assert "quickdraft bench (test)" in report and "Output check (greedy)" in report
    for chart in ("speedup.png", "acceptance.png"):
        assert (out / chart).read_bytes()[:8] == PNG_MAGIC
        assert f"]({chart})" in report


def test_end_to_end_outputs_equal_target_alone(tiny_bench):
    """The Q8_0 target is bit-exact batched or not, so every greedy output must equal the target alone."""
    result, _ = tiny_bench
    assert result.mismatches == []
    by_key = {(r.config, r.prompt_id, r.turn): r for r in result.runs}
    for r in result.runs:
        assert r.tokens == by_key[("target alone", r.prompt_id, r.turn)].tokens


def test_second_turn_follows_the_target_alones_answer(tiny_bench):
    result, _ = tiny_bench
    by_key = {(r.config, r.prompt_id, r.turn): r for r in result.runs}
    first, second = by_key[("target alone", "chat", 0)], by_key[("target alone", "chat", 1)]
    assert second.prompt_tokens > first.prompt_tokens + first.completion_tokens
    assert len({by_key[(c, "chat", 1)].prompt_tokens for c in ("target alone", "ngram k=2", "auto (ngram)")}) == 1


# ---- the mismatch check -----------------------------------------------------------------------------------
def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 9, 3]) == 1
    assert first_difference([1, 2, 3], [1, 2]) == 2
    assert first_difference_in_common("abcdef", "abc") is None  # an output that runs on is no difference
    assert first_difference_in_common("abcdef", "abX") == 2


class ScriptedBackend:
    """Answers from a script: config name -> tokens; one configuration deliberately differs."""

    def __init__(self, outputs: dict[str, list[int]]):
        self.outputs = outputs

    def run(self, config, prompt, turn, messages, max_tokens):
        tokens = self.outputs[config.name]
        return Run(config.name, prompt.id, prompt.category, turn, prompt_tokens=10 * len(messages),
                   completion_tokens=len(tokens), seconds=0.1 * len(tokens), ttft_seconds=0.05, rounds=len(tokens),
                   drafted=len(tokens), accepted=len(tokens) // 2, text="".join(chr(97 + t) for t in tokens),
                   tokens=list(tokens), finish_reason="length")


def test_a_different_output_is_flagged_loudly(tmp_path):
    configs = [Config("target alone", "none"), Config("ngram k=4", "ngram", 4), Config("broken k=4", "broken", 4)]
    backend = ScriptedBackend({"target alone": [1, 2, 3, 4, 5], "ngram k=4": [1, 2, 3, 4, 5],
                               "broken k=4": [1, 2, 3, 7, 5]})
    prompts = [BenchPrompt("p1", "qa", ("q",)), BenchPrompt("p2", "rag", ("q", "again"))]
    runs = run_bench(prompts, configs, {"local": backend}, max_tokens=5, warmup=False)
    mismatches = find_mismatches(runs, configs)
    assert len(mismatches) == 3  # every turn of the broken configuration, nothing else
    assert {m.config for m in mismatches} == {"broken k=4"}
    assert all(m.position == 3 and m.unit == "token" and m.baseline_excerpt == "ef" for m in mismatches)

    result = BenchResult("quickdraft bench (test)", "2025-01-01T00:00:00+00:00", {}, "a test machine",
                         {"prompt_set": "test", "prompts": 2, "turns": 3, "max_tokens": 5, "temperature": 0.0,
                          "target": "t", "threads": 1}, configs, runs, summarize(runs, configs), mismatches, True,
                         checked_backends=["local"])
    write_outputs(result, tmp_path, "test")
    report = (tmp_path / "report.md").read_text()
    assert "MISMATCH: 3 outputs differ" in report
    assert "| broken k=4 | p2 | rag | 2 | token 3 of 5 |" in report
    assert "✅ 3/3" in report and "❌ 0/3" in report
    data = json.loads((tmp_path / "results.json").read_text())
    assert [m["prompt_id"] for m in data["mismatches"]] == ["p1", "p2", "p2"]


class SlowFirstBackend(ScriptedBackend):
    """Every configuration's first attempt at a turn is slowed down, as by another process."""

    def __init__(self, outputs):
        super().__init__(outputs)
        self.calls: dict = {}

    def run(self, config, prompt, turn, messages, max_tokens):
        r = super().run(config, prompt, turn, messages, max_tokens)
        key = (config.name, prompt.id, turn)
        self.calls[key] = self.calls.get(key, 0) + 1
        if self.calls[key] == 1:
            r.seconds *= 10
        return r


def test_repeats_keep_the_fastest_attempt():
    configs = [Config("target alone", "none"), Config("ngram k=4", "ngram", 4)]
    backend = SlowFirstBackend({"target alone": [1, 2, 3], "ngram k=4": [1, 2, 3]})
    runs = run_bench([BenchPrompt("p", "qa", ("q", "again"))], configs, {"local": backend}, max_tokens=3,
                     warmup=False, repeat=3)
    assert len(runs) == 4  # one kept run per configuration and turn
    assert all(r.seconds == pytest.approx(0.3) and len(r.repeat_seconds) == 3 for r in runs)
    assert all(max(r.repeat_seconds) == pytest.approx(3.0) for r in runs)


def test_sampled_runs_are_checked_on_our_backend_only():
    """Our sampled draws are a function of (seed, position), so a seeded configuration must reproduce the target
    alone; llama.cpp's sampler is not ours, so its sampled outputs are not compared."""
    configs = [Config("target alone", "none"), Config("ngram k=4", "ngram", 4),
               Config("llama.cpp target alone", "none", backend="llama.cpp"),
               Config("llama.cpp ngram k=4", "ngram", 4, backend="llama.cpp")]
    outputs = {"target alone": [1, 2], "ngram k=4": [3, 4], "llama.cpp target alone": [1, 2],
               "llama.cpp ngram k=4": [5, 6]}
    backends = {"local": ScriptedBackend(outputs), "llama.cpp": ScriptedBackend(outputs)}
    runs = run_bench([BenchPrompt("p", "qa", ("q",))], configs, backends, max_tokens=2, warmup=False)
    checked = [c for c in configs if c.backend == "local"]
    mismatches = find_mismatches(runs, checked)
    assert [m.config for m in mismatches] == ["ngram k=4"]
    result = BenchResult("c", "2025-01-01T00:00:00", {}, "m", {"prompt_set": "t", "prompts": 1, "turns": 1,
                         "max_tokens": 2, "temperature": 0.7, "target": "t", "threads": 1}, configs, runs,
                         summarize(runs, configs), mismatches, greedy_checked=False, checked_backends=["local"])
    report = markdown(result)
    assert "MISMATCH: 1 outputs differ" in report and "| llama.cpp ngram k=4 |" in report
    assert agreement(result, configs[3]) == "–" and agreement(result, configs[1]) == "❌ 0/1"


# ---- the figures ---------------------------------------------------------------------------------------------
def test_rates_are_totals_over_totals_and_speedups_per_category():
    configs = [Config("target alone", "none"), Config("ngram k=4", "ngram", 4)]
    runs = [
        Run("target alone", "1", "a", 0, completion_tokens=10, seconds=1.0, rounds=10, drafted=0, accepted=0),
        Run("target alone", "2", "a", 0, completion_tokens=30, seconds=1.0, rounds=30, drafted=0, accepted=0),
        Run("ngram k=4", "1", "a", 0, completion_tokens=10, seconds=0.5, rounds=5, drafted=8, accepted=5),
        Run("ngram k=4", "2", "a", 0, completion_tokens=30, seconds=0.5, rounds=10, drafted=40, accepted=20),
    ]
    s = summarize(runs, configs)
    assert s["target alone"]["a"].tokens_per_second == pytest.approx(20.0)  # 40 tokens / 2 s
    assert s["ngram k=4"]["a"].tokens_per_second == pytest.approx(40.0)
    assert s["ngram k=4"]["a"].speedup == pytest.approx(2.0)
    assert s["ngram k=4"][OVERALL].acceptance_rate == pytest.approx(25 / 48)
    assert s["ngram k=4"][OVERALL].tokens_per_round == pytest.approx(40 / 15)


def test_a_failed_turn_is_left_out_for_every_configuration():
    runs = [Run("a", "1", "c", 0), Run("b", "1", "c", 0, error="boom"), Run("a", "2", "c", 0), Run("b", "2", "c", 0)]
    assert complete_turns(runs, {"a", "b"}) == {("2", 0)}


# ---- prompts -----------------------------------------------------------------------------------------------
def test_suites_ship_in_the_package_and_select_per_category():
    spec = prompt_sets.load_suite("spec-bench")
    assert len(spec) == 100 and len({p.category for p in spec}) == 13
    two = prompt_sets.select(spec, per_category=2)
    assert len(two) == 26
    assert max(len(p.turns) for p in two) == 2  # MT-Bench rows are conversations
    code = prompt_sets.load_suite("humaneval")
    assert code[0].category == "humaneval" and "def has_close_elements" in code[0].turns[0]
    with pytest.raises(PromptSetError):
        prompt_sets.select(spec, categories=["no-such-category"])


def test_bad_prompt_files_are_refused(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "no turns here"}\n')
    with pytest.raises(PromptSetError, match="row 1"):
        prompt_sets.load_file(bad)
    bad.write_text("not json\n")
    with pytest.raises(PromptSetError, match="line 1"):
        prompt_sets.load_file(bad)


def test_k_is_capped_where_batches_stop_being_exact():
    from quickdraft.bench.session import effective_ks

    assert effective_ks([2, 4, 8], None) == [2, 4, 8]
    assert effective_ks([2, 4, 8], 3) == [2, 3]  # as Engine.load caps it: the bench measures what users get
    assert effective_ks([4], 0) == []  # no batch is exact: only the target alone runs


def test_configurations():
    names = [c.name for c in local_configs(["ngram", "gemma-3-270m", "auto"], [2, 4], ["ngram", "gemma-3-270m"])]
    assert names == ["target alone", "ngram k=2", "ngram k=4", "gemma-3-270m k=2", "gemma-3-270m k=4",
                     "auto (ngram, gemma-3-270m)"]


# ---- llama.cpp and servers ------------------------------------------------------------------------------
LLAMA_LOG = """
0.10.713.046 I encoded   23 tokens in    1.909 seconds, speed:   30.383 t/s
0.10.713.068 I decoded   35 tokens in    5.537 seconds, speed:    6.321 t/s
0.10.713.104 I n_draft      = 4
0.10.713.117 I n_predict    = 35
0.10.713.130 I n_drafted    = 28
0.10.713.171 I n_accept     = 23
"""


def test_llamacpp_report_is_parsed():
    r = parse_report(LLAMA_LOG)
    assert (r.prompt_tokens, r.tokens, r.drafted, r.accepted) == (23, 35, 28, 23)
    assert r.prompt_seconds == pytest.approx(1.909) and r.decode_seconds == pytest.approx(5.537)
    assert generated_text("\n\n<bos>Hi there<end>\nmodel\nHello!\n\n", "Hi there<end>\nmodel\n") == "Hello!"


def test_llamacpp_gets_the_same_gpu_offload_as_our_run(tmp_path):
    """The comparison is fair only if llama.cpp puts as many layers on the GPU as our run did."""
    from pathlib import Path

    from quickdraft.bench.llamacpp import LOOKUP, SPECULATIVE, command

    programs = {LOOKUP: Path("llama-lookup"), SPECULATIVE: Path("llama-speculative-simple")}
    for draft, gpu, draft_gpu in [("ngram", 0, 0), ("none", 19, 0), ("gemma-3-270m", 19, 7)]:
        cmd = command(Config("x", draft, 4), programs=programs, target=Path("t.gguf"),
                      draft_models={"gemma-3-270m": Path("d.gguf")}, prompt_text="hi", max_tokens=8,
                      temperature=0.0, seed=1, threads=2, n_ctx=512, scratch=tmp_path, gpu_layers=gpu,
                      draft_gpu_layers=draft_gpu)
        assert cmd[cmd.index("-ngl") + 1] == str(gpu)
        assert ("-ngld" in cmd) == (draft == "gemma-3-270m")
        if "-ngld" in cmd:
            assert cmd[cmd.index("-ngld") + 1] == str(draft_gpu)


def sse(*events: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def fake_server(with_usage: bool, seen: list):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tiny"}]})
        seen.append(json.loads(request.content))
        chunks = [{"choices": [{"delta": {"content": "ab"}, "finish_reason": None}], "usage": None},
                  {"choices": [{"delta": {"content": "cd"}, "finish_reason": "length"}], "usage": None}]
        if with_usage:
            chunks.append({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}})
        return httpx.Response(200, content=sse(*chunks), headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


def test_server_tokens_come_from_usage_never_chunks():
    seen: list = []
    backend = ServerBackend("http://test", transport=fake_server(True, seen))
    run_ = backend.run(Config("server: ngram k=2", "ngram", 2, "server"), BenchPrompt("p", "qa", ("hi",)), 0,
                       [{"role": "user", "content": "hi"}], 16)
    assert run_.error is None
    assert run_.completion_tokens == 7  # two chunks arrived; the server said seven tokens
    assert run_.text == "abcd" and run_.ttft_seconds is not None
    assert seen[0]["model"] == "tiny" and seen[0]["quickdraft"] == {"draft": "ngram", "k": 2}
    assert seen[0]["stream_options"] == {"include_usage": True}

    silent = ServerBackend("http://test", transport=fake_server(False, []))
    failed = silent.run(Config("server: server", "server", None, "server"), BenchPrompt("p", "qa", ("hi",)), 0,
                        [{"role": "user", "content": "hi"}], 16)
    assert failed.error and "usage" in failed.error and failed.completion_tokens == 0


def test_cli_registers_bench():
    from quickdraft.cli import build_parser

    args = build_parser().parse_args(["bench", "--target", "t", "--draft", "ngram", "auto", "--k", "2", "8",
                                      "--per-category", "2", "--max-tokens", "128", "--against", "llama.cpp"])
    assert args.draft == ["ngram", "auto"] and args.k == [2, 8] and args.against == "llama.cpp"


def test_against_llamacpp_end_to_end(tmp_path):
    """llama.cpp's own programs on the same prompt, beside ours (skipped until they are built)."""
    from quickdraft.llama_build import find_tool

    if not (find_tool("llama-lookup", stock=True) and find_tool("llama-speculative-simple", stock=True)):
        pytest.skip("llama.cpp programs not built (quickdraft.llama_build.build_tools)")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps(TINY[0]) + "\n")
    settings = BenchSettings(target=TARGET, drafts=["ngram"], ks=[3], prompts_file=str(prompts), max_tokens=8,
                             out=tmp_path / "out", threads=2, warmup=False, against="llama.cpp")
    result = run(settings)
    assert [c.name for c in result.configs] == ["target alone", "ngram k=3", "llama.cpp target alone",
                                                "llama.cpp ngram k=3"]
    theirs = [r for r in result.runs if r.config.startswith("llama.cpp")]
    assert all(r.error is None and r.completion_tokens >= 8 and r.seconds > 0 and r.text for r in theirs)
    assert all(0 < r.peak_rss_bytes < 2**31 for r in theirs)  # the child's memory, not this process's
    assert result.summary["ngram k=3"]["overall"].vs_llamacpp is not None
    assert "Against llama.cpp" in (tmp_path / "out" / "report.md").read_text()


def test_cpu_features_lists_what_llama_cpp_uses():
    info = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 0 | LLAMAFILE = 1 | OPENMP = 1 |"
    assert cpu_features(info) == "SSE3, AVX2, LLAMAFILE, OPENMP"
    assert cpu_features("") == ""
