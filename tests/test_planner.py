"""The planner on simulated machines, over GGUF headers written with gguf.GGUFWriter (no weights: each file is
its header, then a sparse tail up to the size the tensors would take), shaped like Qwen2.5 14B/7B/1.5B/0.5B."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, LlamaFileType

from quickdraft import planner
from quickdraft.cli import main
from quickdraft.discovery import SearchRoots, discover
from quickdraft.gguf_info import read_info
from quickdraft.hardware import Hardware

GIB = 2**30
QWEN_VOCAB = [f"tok{i}" for i in range(152064)]
OTHER_VOCAB = [f"other{i}" for i in range(32000)]

# name: (layers, n_embd, heads, kv heads, ffn, tied embeddings)
QWEN = {
    "qwen2.5-14b": (48, 5120, 40, 8, 13824, False),
    "qwen2.5-7b": (28, 3584, 28, 4, 18944, False),
    "qwen2.5-1.5b": (28, 1536, 12, 2, 8960, True),
    "qwen2.5-0.5b": (24, 896, 14, 2, 4864, True),
}


def _matrix_type(cols: int) -> GGMLQuantizationType:
    return GGMLQuantizationType.Q4_K if cols % 256 == 0 else GGMLQuantizationType.Q8_0


def write_model(path: Path, arch: str, shape: tuple, vocab: list[str], *, template: bool = True) -> Path:
    """A GGUF header describing a model of this shape; the file is sparse up to the tensors' total size."""
    n_layers, n_embd, n_head, n_head_kv, n_ff, tied = shape
    head_dim = n_embd // n_head
    w = GGUFWriter(path, arch)
    w.add_name(path.stem)
    w.add_file_type(LlamaFileType.MOSTLY_Q4_K_M)
    w.add_context_length(32768)
    w.add_block_count(n_layers)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(vocab)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    if template:
        w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    total = 0

    def tensor(name: str, rows: int, cols: int, qtype: GGMLQuantizationType | None = None) -> None:
        nonlocal total
        qtype = qtype or _matrix_type(cols)
        block, size = GGML_QUANT_SIZES[qtype]
        nbytes = rows * cols // block * size
        w.add_tensor_info(name, (rows, cols), np.dtype(np.float32), nbytes, raw_dtype=qtype)
        total += nbytes + 32

    tensor("token_embd.weight", len(vocab), n_embd, GGMLQuantizationType.Q6_K if n_embd % 256 == 0 else None)
    kv = n_head_kv * head_dim
    for i in range(n_layers):
        tensor(f"blk.{i}.attn_norm.weight", 1, n_embd, GGMLQuantizationType.F32)
        tensor(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        tensor(f"blk.{i}.attn_k.weight", kv, n_embd)
        tensor(f"blk.{i}.attn_v.weight", kv, n_embd)
        tensor(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        tensor(f"blk.{i}.ffn_norm.weight", 1, n_embd, GGMLQuantizationType.F32)
        tensor(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        tensor(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        tensor(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    tensor("output_norm.weight", 1, n_embd, GGMLQuantizationType.F32)
    if not tied:
        tensor("output.weight", len(vocab), n_embd, GGMLQuantizationType.Q6_K if n_embd % 256 == 0 else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    header_end = w.fout[0].tell()
    w.close()
    with open(path, "r+b") as f:
        f.truncate(header_end + total)  # sparse: no disk blocks for the "weights"
    return path


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    write_simulated_models(d)
    return d


@pytest.fixture(scope="module", autouse=True)
def info_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("QUICKDRAFT_GGUF_INFO_CACHE", str(tmp_path_factory.mktemp("cache") / "gguf-info.json"))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def models(models_dir):
    found = discover(SearchRoots.only(models_dir))
    assert not found.skipped
    return found.models


def machine(gpus=(), ram_gib=16.0, cores=8) -> Hardware:
    from quickdraft.hardware import Gpu

    return Hardware(cpu="simulated", physical_cores=cores, logical_cores=cores, memory_bytes=int(ram_gib * GIB),
                    available_bytes=int(ram_gib * GIB),
                    gpus=[Gpu(name, int(gib * GIB), int(gib * GIB), bw) for name, gib, bw in gpus])


RTX_2050 = ("RTX 2050", 4, 112e9)


def by_name(models, stem):
    return next(m for m in models if m.name.startswith(stem))


def test_headers_describe_the_models(models):
    big = by_name(models, "qwen2.5-14b").info
    small = by_name(models, "qwen2.5-0.5b").info
    assert big.n_layers == 48 and big.n_head_kv == 8 and big.n_vocab == 152064 and big.file_type == "Q4_K_M"
    assert 14e9 < big.n_params < 15.5e9 and 0.45e9 < small.n_params < 0.65e9
    assert small.tied_embeddings and not big.tied_embeddings
    assert big.file_size > 8 * GIB  # sparse file of the tensors' size
    assert big.vocab_fingerprint == small.vocab_fingerprint
    assert by_name(models, "other-3b").info.vocab_fingerprint != big.vocab_fingerprint


def test_small_gpu_drafts_for_a_big_target_in_ram(models):
    p = planner.plan(machine([RTX_2050]), models, ctx=4096)
    assert p.target.name.startswith("qwen2.5-14b")
    assert p.draft is not None and p.draft.name.startswith(("qwen2.5-0.5b", "qwen2.5-1.5b"))
    assert p.draft.gpu_layers == p.draft.n_layers  # the draft wholly on the GPU
    assert 0 <= p.target.gpu_layers < p.target.n_layers // 2  # the target mostly in RAM
    assert p.main_gpu == 0 and p.k is not None and 1 <= p.k <= planner.MAX_K
    # what the plan puts on the GPU fits in it
    assert p.target.gpu_bytes + p.draft.gpu_bytes <= p.machine.gpu_usable
    assert p.target.ram_bytes + p.draft.ram_bytes <= p.machine.ram_usable
    cpu, offload, spec = (e.tokens_per_second for e in p.estimates)
    assert spec > offload >= cpu > 0


def test_a_model_of_another_vocabulary_is_never_the_draft(models):
    other = by_name(models, "other-3b")
    for hw in (machine([RTX_2050]), machine(), machine([("big", 80, 2000e9)], ram_gib=64)):
        p = planner.plan(hw, models, ctx=4096)
        assert p.draft is None or p.draft.path != str(other.path)
    # as the target, nothing drafts for it
    p = planner.plan(machine([RTX_2050]), models, ctx=4096, target=other)
    assert p.draft is None


def test_no_gpu_no_gpu_layers(models):
    p = planner.plan(machine(), models, ctx=4096)
    assert p.target.name.startswith("qwen2.5-14b")
    assert p.target.gpu_layers == 0 and (p.draft is None or p.draft.gpu_layers == 0)
    assert p.main_gpu is None and p.estimates[1].tokens_per_second is None


def test_too_little_ram_picks_a_smaller_target_or_says_why(models):
    p = planner.plan(machine(ram_gib=8), models, ctx=4096)
    assert p.target.name.startswith("qwen2.5-7b")
    assert any("larger models do not fit" in r for r in p.reasons)
    with pytest.raises(planner.PlanError, match="no model fits"):
        planner.plan(machine(ram_gib=1.2), models, ctx=4096)


def test_everything_on_a_large_gpu(models):
    p = planner.plan(machine([("H100", 80, 3350e9)], ram_gib=64), models, ctx=4096)
    assert p.target.name.startswith("qwen2.5-14b") and p.target.gpu_layers == p.target.n_layers


def test_gpu_layers_for_a_named_pair(models):
    target, draft = by_name(models, "qwen2.5-14b"), by_name(models, "qwen2.5-0.5b")
    p = planner.plan_pair(machine([RTX_2050]), target, draft, ctx=4096)
    assert p.draft.path == str(draft.path) and p.gpu_layers_for(draft.path) == p.draft.n_layers
    assert p.gpu_layers_for(target.path) == p.target.gpu_layers


def test_assumed_machines_replace_detection():
    hw = planner.assume(machine(), gpus=["RTX 2050:4:112", "Other GPU:8"], ram_gib=16, cores=8)
    assert [(g.name, g.memory_bytes, g.bandwidth_bytes_per_s) for g in hw.gpus] == [
        ("RTX 2050", 4 * GIB, 112e9), ("Other GPU", 8 * GIB, None)]
    assert planner.assume(hw, gpus=["none"]).gpus == []
    with pytest.raises(planner.PlanError, match="NAME:GiB"):
        planner.assume(hw, gpus=["RTX 2050"])


def test_plan_command_json(models_dir, capsys):
    rc = main(["plan", "--models", str(models_dir), "--only", "--assume-gpu", "RTX 2050:4:112",
               "--assume-ram", "16", "--assume-cores", "8", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"]["name"].startswith("qwen2.5-14b") and out["target"]["gpu_layers"] >= 0
    assert out["draft"]["gpu_layers"] == out["draft"]["n_layers"]
    assert out["hardware"]["gpus"][0]["name"] == "RTX 2050" and out["reasons"]


def test_plan_command_error_is_clear(models_dir, capsys):
    rc = main(["plan", "--models", str(models_dir), "--only", "--assume-gpu", "none", "--assume-ram", "1"])
    assert rc == 2 and "no model fits" in capsys.readouterr().err


def test_info_reads_the_written_header(models_dir):
    info = read_info(models_dir / "other-3b-q4_k_m.gguf", use_cache=False)
    assert (info.architecture, info.n_layers, info.n_vocab, info.has_chat_template) == ("llama", 26, 32000, False)


def write_simulated_models(folder: Path) -> None:
    """The files the tests plan over: Qwen2.5-shaped 14B/7B/1.5B/0.5B headers and a 3B of another vocabulary."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, shape in QWEN.items():
        write_model(folder / f"{name}-q4_k_m.gguf", "qwen2", shape, QWEN_VOCAB)
    write_model(folder / "other-3b-q4_k_m.gguf", "llama", (26, 3072, 24, 8, 8192, False), OTHER_VOCAB, template=False)


if __name__ == "__main__":  # README: `python tests/test_planner.py DIR` writes them for `quickdraft plan --models DIR`
    import sys

    write_simulated_models(Path(sys.argv[1]))


def test_one_network_in_several_files_gives_its_q8_0_and_no_draft(tmp_path):
    """The demo Gemma as Q4_K_M and Q8_0 files: the target is the Q8_0 one (the most precise up to 8.5 bits per
    weight), and the Q4_K_M copy of the same network is not its draft (same arithmetic per token)."""
    from quickdraft import model_store

    for name in ("gemma-3-270m", "gemma-3-270m-q8_0"):
        (tmp_path / f"{name}.gguf").symlink_to(model_store.resolve(name))
    found = discover(SearchRoots.only(tmp_path)).models
    p = planner.plan(machine(), found, 4096)
    assert Path(p.target.path).name == "gemma-3-270m-q8_0.gguf"
    assert p.draft is None
