import json
import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "quickdraft", *args], capture_output=True, text=True, timeout=300)


def test_generate_json_has_text_tokens_finish_reason_and_stats():
    p = run("generate", "--target", "gemma-3-270m-q8_0", "--draft", "gemma-3-270m", "-p", "The sky is",
            "--max-tokens", "12", "--json", "--threads", "2")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert len(out["tokens"]) == 12 and out["finish_reason"] == "length" and out["text"]
    for key in ("rounds", "drafted", "accepted", "acceptance_rate", "mean_accepted_per_round",
                "draft_seconds", "verify_seconds", "tokens_per_second"):
        assert key in out["stats"]


def test_generate_target_alone_matches_speculative():
    args = ["generate", "--target", "gemma-3-270m-q8_0", "-p", "Once upon a time", "--max-tokens", "16",
            "--json", "--threads", "2"]
    alone = json.loads(run(*args, "--draft", "none").stdout)
    spec = json.loads(run(*args, "--draft", "gemma-3-270m", "-k", "8").stdout)
    assert alone["tokens"] == spec["tokens"]
    assert alone["stats"]["drafted"] == 0 and spec["stats"]["drafted"] > 0


def test_cli_errors_are_one_clear_line_and_exit_2(tmp_path):
    p = run("generate", "--target", str(tmp_path / "missing.gguf"), "-p", "hi")
    assert p.returncode == 2
    assert "quickdraft: error: model file not found" in p.stderr
    assert "Traceback" not in p.stderr
    p = run("generate", "--target", "gemma-3-270m-q8_0", "--draft", "smollm2-135m", "-p", "hi")
    assert p.returncode == 2 and "vocabulary" in p.stderr
    p = run("generate", "--target", "gemma-3-270m-q8_0", "-k", "0", "-p", "hi")
    assert p.returncode == 2 and "K" in p.stderr
