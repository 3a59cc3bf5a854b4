"""Discovery over folders laid out like LM Studio's, Ollama's and the Hugging Face cache, holding symlinks to
the demo GGUFs; metadata read from headers only (checked against llama.cpp's own vocabulary)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from gguf import GGUFWriter

from quickdraft import model_store
from quickdraft.cli import main
from quickdraft.discovery import SearchRoots, by_vocabulary, discover, ollama_name
from quickdraft.gguf_info import cache_path, read_info, same_family, same_vocabulary

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # the demo package's


def _link(dst: Path, src: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)
    return dst


def _blob(root: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    return f"sha256:{digest}"


def _manifest(root: Path, registry: str, namespace: str, model: str, tag: str, model_digest: str | None,
              size: int) -> None:
    """A manifest as `ollama pull` writes it: config, then model/template/params layers."""
    layers = [{"mediaType": "application/vnd.ollama.image.template", "digest": _blob(root, b"{{ .Prompt }}"),
               "size": 12},
              {"mediaType": "application/vnd.ollama.image.params", "digest": _blob(root, b'{"stop":["<eos>"]}'),
               "size": 18}]
    if model_digest:
        layers.insert(0, {"mediaType": "application/vnd.ollama.image.model", "digest": model_digest, "size": size})
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": _blob(root, b'{"model_format":"gguf","model_family":"gemma3"}'), "size": 48},
        "layers": layers,
    }
    path = root / "manifests" / registry / namespace / model / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def demo():
    return {
        "gemma": model_store.resolve("gemma-3-270m", progress=False, derive_missing=False),
        "smol": model_store.resolve("smollm2-135m", progress=False, derive_missing=False),
    }


@pytest.fixture(scope="module")
def home(tmp_path_factory, demo) -> Path:
    """A home folder with LM Studio, Ollama and the Hugging Face cache, and a folder of the user's own."""
    home = tmp_path_factory.mktemp("home")
    _link(home / ".lmstudio/models/HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf",
          demo["smol"])
    (home / ".lmstudio/models/junk/notes").mkdir(parents=True)
    (home / ".lmstudio/models/junk/notes/readme.gguf").write_text("not a model")
    ollama = home / ".ollama/models"
    (ollama / "blobs").mkdir(parents=True)
    _link(ollama / "blobs" / f"sha256-{GEMMA_SHA256}", demo["gemma"])
    _manifest(ollama, "registry.ollama.ai", "library", "gemma3", "270m", f"sha256:{GEMMA_SHA256}", 253113024)
    _manifest(ollama, "registry.ollama.ai", "library", "broken", "latest", "sha256:" + "0" * 64, 1)
    _manifest(ollama, "registry.ollama.ai", "library", "nomodel", "latest", None, 0)
    hf = home / "hf-cache"
    repo = hf / "models--unsloth--gemma-3-270m-it-GGUF"
    blob = _link(repo / "blobs" / GEMMA_SHA256, demo["gemma"])
    snapshot = repo / "snapshots/0123abcd"
    _link(snapshot / "gemma-3-270m-it-Q4_K_M.gguf", Path(os.path.relpath(blob, snapshot)))  # as huggingface_hub does
    _link(home / "mine/sub/smol-copy.gguf", demo["smol"])
    return home


@pytest.fixture(scope="module")
def env(home, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    for var in ("QUICKDRAFT_MODELS", "QUICKDRAFT_LMSTUDIO_MODELS", "OLLAMA_MODELS", "HF_HOME"):
        mp.delenv(var, raising=False)
    mp.setenv("HF_HUB_CACHE", str(home / "hf-cache"))
    mp.setenv("QUICKDRAFT_GGUF_INFO_CACHE", str(tmp_path_factory.mktemp("cache") / "gguf-info.json"))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def found(home, env):
    roots = SearchRoots(quickdraft_names=False).resolved(home=home)
    return discover(roots)


def test_finds_each_tool_s_models(found, demo):
    names = {(m.source, m.name): m for m in found.models}
    assert ("lmstudio", "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1") in names
    assert ("ollama", "gemma3:270m") in names
    assert names[("ollama", "gemma3:270m")].path.resolve() == demo["gemma"].resolve()
    # the same file under two names is listed once, under the first found (Ollama before the HF cache)
    assert [m.source for m in found.models if m.path.resolve() == demo["gemma"].resolve()] == ["ollama"]
    assert len(found.models) == 2


def test_hf_cache_and_env_paths(home, env, monkeypatch, demo):
    monkeypatch.setenv("QUICKDRAFT_MODELS", str(home / "mine"))
    roots = SearchRoots(quickdraft_names=False, lmstudio=[], ollama=[]).resolved(home=home)
    got = {(m.source, m.name) for m in discover(roots).models}
    assert got == {("path", "smol-copy"), ("huggingface", "unsloth/gemma-3-270m-it-GGUF/gemma-3-270m-it-Q4_K_M.gguf")}


def test_bad_files_are_skipped_with_a_reason(found):
    why = {Path(p).name: w for p, w in found.skipped}
    assert "not a GGUF" in why["readme.gguf"]
    assert "blob missing" in why["latest"] or "without a model layer" in why["latest"]
    assert sum("Ollama" in w for w in why.values()) >= 1 and len(found.skipped) == 3


def test_metadata_from_headers(found):
    by = {m.source: m.info for m in found.models}
    gemma, smol = by["ollama"], by["lmstudio"]
    assert (gemma.architecture, gemma.file_type, gemma.n_layers, gemma.n_vocab) == ("gemma3", "Q4_K_M", 18, 262144)
    assert 260e6 < gemma.n_params < 280e6 and gemma.context_length == 32768 and not gemma.has_chat_template
    assert (smol.architecture, smol.file_type, smol.n_vocab, smol.has_chat_template) == ("llama", "Q4_1", 49152, True)
    assert smol.n_head_kv == 3 and smol.key_length == 64
    assert not same_vocabulary(gemma, smol) and not same_family(gemma, smol)


def test_fingerprint_equals_llama_cpp_s(demo, env):
    from quickdraft.llama_model import LlamaModel

    for path in demo.values():
        assert read_info(path).vocab_fingerprint == LlamaModel(path, vocab_only=True).vocab_fingerprint


def test_groups_by_vocabulary(env, home, demo, tmp_path):
    q8 = model_store.cache_dir() / "models" / "gemma-3-270m-q8_0.gguf"
    if not q8.is_file():
        pytest.skip("gemma-3-270m-q8_0 not prepared (quickdraft models prepare)")
    _link(tmp_path / "gemma-q8.gguf", q8)
    _link(tmp_path / "gemma-q4.gguf", demo["gemma"])
    _link(tmp_path / "smol.gguf", demo["smol"])
    groups = by_vocabulary(discover(SearchRoots.only(tmp_path)).models)
    assert [[m.name for m in g] for g in groups] == [["gemma-q8", "gemma-q4"], ["smol"]]


def test_cache_is_keyed_by_size_and_mtime(env, tmp_path):
    path = tmp_path / "tiny.gguf"

    def write(n_layers: int) -> None:
        w = GGUFWriter(path, "llama")
        w.add_block_count(n_layers)
        w.add_token_list(["a", "b"])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.close()

    write(2)
    assert read_info(path).n_layers == 2
    assert str(path.absolute()) in json.loads(cache_path().read_text())["files"]
    write(30)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert read_info(path).n_layers == 30


def test_ollama_names():
    assert ollama_name("registry.ollama.ai", "library", "qwen2.5", "14b") == "qwen2.5:14b"
    assert ollama_name("registry.ollama.ai", "someone", "m", "q4") == "someone/m:q4"
    assert ollama_name("hf.co", "bartowski", "Qwen-GGUF", "Q4_K_M") == "hf.co/bartowski/Qwen-GGUF:Q4_K_M"


def test_models_command_json(home, env, capsys):
    assert main(["models", "--models", str(home / "mine"), "--only", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(m["name"], m["architecture"], m["chat_template"]) for m in out["models"]] == [("smol-copy", "llama", True)]


def test_default_roots_honour_the_environment(tmp_path):
    env = {"HF_HOME": "/x/hf", "OLLAMA_MODELS": "/y", "QUICKDRAFT_MODELS": f"/a{os.pathsep}/b"}
    r = SearchRoots().resolved(env=env, home=tmp_path)
    assert (r.huggingface, r.ollama, r.paths) == ([Path("/x/hf/hub")], [Path("/y")], [Path("/a"), Path("/b")])
    r = SearchRoots().resolved(env={"HF_HUB_CACHE": "/z", "HF_HOME": "/x/hf"}, home=tmp_path)
    assert r.huggingface == [Path("/z")] and r.paths == []
    assert r.lmstudio == [tmp_path / ".lmstudio/models", tmp_path / ".cache/lm-studio/models"]
    assert SearchRoots.only("/m").resolved(env=env, home=tmp_path).paths == [Path("/m")]


def _tiny(path: Path, tokens: list[str], model_type: str | None = None) -> Path:
    w = GGUFWriter(path, "llama")
    if model_type:
        w.add_type(model_type)
    w.add_block_count(2)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


def test_adapters_are_not_models(env, tmp_path):
    _tiny(tmp_path / "lora.gguf", ["a", "b"], model_type="adapter")
    found = discover(SearchRoots.only(tmp_path))
    assert found.models == [] and "adapter (llama)" in found.skipped[0][1]


def test_same_family_tolerates_extra_tokens_at_the_end(env, tmp_path):
    tokens = [f"t{i}" for i in range(5000)]
    a = read_info(_tiny(tmp_path / "a.gguf", tokens))
    b = read_info(_tiny(tmp_path / "b.gguf", tokens + ["<extra_0>", "<extra_1>"]))
    c = read_info(_tiny(tmp_path / "c.gguf", ["x"] + tokens[1:10] + ["changed"] + tokens[11:]))
    assert not same_vocabulary(a, b) and same_family(a, b)
    assert not same_family(a, c)


def test_an_unreadable_root_is_skipped(env, tmp_path, monkeypatch, demo):
    from quickdraft import discovery

    def denied(roots, skipped):  # what stat() raises in another user's /usr/share/ollama
        raise PermissionError(13, "Permission denied")
        yield

    monkeypatch.setattr(discovery, "ollama_candidates", denied)
    _link(tmp_path / "mine" / "smol.gguf", demo["smol"])
    found = discover(SearchRoots(quickdraft_names=False, lmstudio=[], huggingface=[], ollama=[tmp_path / "ollama"],
                                 paths=[tmp_path / "mine"], use_env=False))
    assert [m.name for m in found.models] == ["smol"]
    assert found.skipped == [(str(tmp_path / "ollama"), "cannot search: Permission denied")]


def test_a_split_model_is_one_model(env, tmp_path):
    import numpy as np

    w = GGUFWriter(tmp_path / "big.gguf", "llama", split_max_tensors=2)  # big-00001-of-00002.gguf, big-00002-...
    w.add_block_count(2)
    w.add_token_list(["a", "b"])
    for i in range(2):
        for name in ("attn_q", "ffn_up"):
            w.add_tensor(f"blk.{i}.{name}.weight", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    found = discover(SearchRoots.only(tmp_path))
    assert found.skipped == [] and [m.name for m in found.models] == ["big"]
    info = found.models[0].info
    assert info.n_params == 4 * 4 * 32 and info.layer_bytes == [2 * 4 * 32 * 4] * 2
    assert info.file_size == sum(p.stat().st_size for p in tmp_path.glob("big-*.gguf"))
