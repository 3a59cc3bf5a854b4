"""Per-model placement (quickdraft.placement): GPU layers, main GPU and threads, from flags and the config to
llama.cpp, read back from the loaded models.

This machine has no GPU and a CPU-only llama.cpp build: llama.cpp takes any n_gpu_layers and offloads nothing,
which the read-back shows (every layer on the CPU). Real offloading is checked through llama.cpp's RPC backend
(an rpc-server worker is a device like a GPU): N layers asked, N layers on the worker.
"""

from __future__ import annotations

import pytest
import yaml

from quickdraft import Engine, model_store
from quickdraft.cli import build_parser
from quickdraft.config import ConfigError, load_config
from quickdraft.exactness import cap_message, probe_key
from quickdraft.gguf_info import read_info
from quickdraft.llama_model import gpu_devices
from quickdraft.loading import open_model
from quickdraft.placement import (ALL_LAYERS, ModelPlacement, Placement, parse_gpu_layers, placement_from_args,
                                  planned_layers, resolve, resolve_one)
from quickdraft.server.cli import config_from_args

TARGET, DRAFT = "gemma-3-270m-q8_0", "gemma-3-270m"


# ---- values, config, flags (no model loaded) ------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("all", "all"), ("none", 0), ("NONE", 0),
                                             ("12", 12), (0, 0), (7, 7), (" all ", "all")])
def test_gpu_layers_values(value, expected):
    assert parse_gpu_layers(value) == expected


@pytest.mark.parametrize("value", ["-1", -2, "lots", "1.5", True, ""])
def test_bad_gpu_layers_are_refused(value):
    with pytest.raises(ValueError, match="gpu_layers"):
        parse_gpu_layers(value)


def test_placement_config_section_file_env_and_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"placement": {"target": {"gpu_layers": "none", "threads": 2},
                                               "draft": {"gpu_layers": "all", "main_gpu": 1}}}))
    c = load_config(f, env={"QUICKDRAFT_PLACEMENT__TARGET__GPU_LAYERS": "12"})
    assert c.placement.target == ModelPlacement(gpu_layers=12, threads=2)  # the environment beats the file
    assert c.placement.draft == ModelPlacement(gpu_layers="all", main_gpu=1)
    assert load_config(env={}).placement == Placement()  # default: auto for both
    assert load_config(env={}).placement.target.gpu_layers == "auto"
    with pytest.raises(ConfigError, match="placement.draft.gpu_layers"):
        load_config(env={"QUICKDRAFT_PLACEMENT__DRAFT__GPU_LAYERS": "most"})
    with pytest.raises(ConfigError, match="no config key 'placement.draft.gpu_layer'"):
        load_config(env={"QUICKDRAFT_PLACEMENT__DRAFT__GPU_LAYER": "3"})
    with pytest.raises(ConfigError, match="placement.target.main_gpu"):
        load_config(env={}, overrides={"placement.target.main_gpu": -1})


def test_serve_flags_set_the_placement_keys():
    args = build_parser().parse_args(["config", "show", "--target-gpu-layers", "all", "--draft-gpu-layers", "3",
                                      "--draft-main-gpu", "1", "--target-threads", "1", "--threads", "2"])
    c = config_from_args(args)
    assert c.placement.target == ModelPlacement(gpu_layers="all", threads=1)
    assert c.placement.draft == ModelPlacement(gpu_layers=3, main_gpu=1)
    assert c.models.threads == 2


def test_generate_and_bench_flags():
    for argv in (["generate", "--target", "t", "-p", "x"], ["bench", "--target", "t"]):
        args = build_parser().parse_args(argv + ["--draft-gpu-layers", "none", "--target-main-gpu", "0"])
        assert placement_from_args(args) == Placement(target=ModelPlacement(main_gpu=0),
                                                      draft=ModelPlacement(gpu_layers=0))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--target", "t", "-p", "x", "--target-gpu-layers", "many"])


def test_resolve_without_a_gpu_auto_is_none():
    assert gpu_devices() == ()  # this machine: a CPU-only llama.cpp build
    on_target, on_draft = resolve(None, target=TARGET, draft=DRAFT, n_ctx=512, threads=2)
    assert (on_target.gpu_layers, on_draft.gpu_layers) == (0, 0)  # auto = today's CPU behaviour
    assert (on_target.threads, on_draft.threads) == (2, 2)
    placement = Placement(target=ModelPlacement(gpu_layers="all", threads=1), draft=ModelPlacement(gpu_layers=5))
    on_target, on_draft = resolve(placement, target=TARGET, draft=DRAFT, n_ctx=512, threads=2)
    assert (on_target.gpu_layers, on_target.threads) == (ALL_LAYERS, 1)
    assert (on_draft.gpu_layers, on_draft.threads) == (5, 2)
    # with rpc-server workers, auto puts the target's layers on them (as `quickdraft node --rpc` always did)
    assert resolve(None, target=TARGET, n_ctx=512, rpc=True)[0].gpu_layers == ALL_LAYERS
    assert resolve_one("target", TARGET, None, n_ctx=512, rpc=True).gpu_layers == ALL_LAYERS
    assert resolve_one("draft", DRAFT, None, n_ctx=512).gpu_layers == 0


def test_auto_with_a_gpu_takes_the_planners_layers():
    """The GPU branch of auto, on a simulated 4 GB GPU (no GPU here): the planner's layers for this pair."""
    from quickdraft.discovery import FoundModel
    from quickdraft.hardware import detect
    from quickdraft.planner import assume, plan_pair

    hw = assume(detect(), gpus=["RTX 2050:4:112"], ram_gib=16, cores=4)
    found = [FoundModel(n, "path", model_store.resolve(n), read_info(model_store.resolve(n)))
             for n in ("gemma-3-270m-f16", DRAFT)]
    plan = plan_pair(hw, found[0], found[1], 4096)
    layers = planned_layers("gemma-3-270m-f16", DRAFT, 4096, devices=("CUDA0: simulated",), hardware=hw)
    assert layers == (plan.target.gpu_layers, plan.draft.gpu_layers if plan.draft else 0)
    assert layers[1] > 0  # the draft goes to the GPU
    no_gpu = assume(detect(), gpus=["none"])
    assert planned_layers("gemma-3-270m-f16", DRAFT, 4096, devices=("CUDA0: simulated",), hardware=no_gpu) == (0, 0)
    assert planned_layers("gemma-3-270m-f16", DRAFT, 4096, devices=(), hardware=hw) == (0, 0)  # CPU build
    assert planned_layers("node://h:1", None, 4096, devices=("CUDA0: simulated",), hardware=hw) == (0, 0)


# ---- through Engine.load to llama.cpp, read back -----------------------------------------------------------------
def serve_config(*flags: str):
    return config_from_args(build_parser().parse_args(
        ["config", "show", "--target", TARGET, "--draft", DRAFT, "--inexact", "--ctx", "256", *flags]))


@pytest.mark.parametrize("target_flag, draft_flag, target_asked, draft_asked", [
    ("none", "all", 0, ALL_LAYERS),
    ("5", "3", 5, 3),
])
def test_config_placement_reaches_llama_cpp(target_flag, draft_flag, target_asked, draft_asked):
    config = serve_config("--target-gpu-layers", target_flag, "--draft-gpu-layers", draft_flag,
                          "--draft-main-gpu", "0", "--draft-threads", "1", "--threads", "2")
    engine = config.models.load_engine(config.nodes, config.placement)
    target, draft = engine.target.model, engine.drafters["model"].model
    assert (target.n_gpu_layers, target.main_gpu, target.threads) == (target_asked, None, 2)
    assert (draft.n_gpu_layers, draft.main_gpu, draft.threads) == (draft_asked, 0, 1)
    for model in (target, draft):
        # llama.cpp's own layer count (llama_model_n_layer) is the GGUF's block count
        assert model.n_layer == read_info(model.path).n_layers
        # what llama.cpp did on this CPU-only build: every layer (and the output layer) on the CPU
        assert model.layer_devices == {"CPU": model.n_layer + 1}
        assert model.offloaded_layers == 0
        assert model.buffers_mib and all(name.startswith("CPU") for name in model.buffers_mib)
    assert engine.describe()["placement"]["target"].startswith(f"{target.n_layer + 1}/{target.n_layer + 1} layers on CPU")
    target.close()
    draft.close()


def test_placement_keeps_the_output_and_the_probe_key():
    """GPU layers asked on a CPU build change nothing: same tokens, same exactness-probe key as no GPU layers."""
    plain = Engine.load("smollm2-135m", "none", n_ctx=256, threads=1, exact=False)
    placed = Engine.load("smollm2-135m", "none", n_ctx=256, threads=1, exact=False,
                         placement=Placement(target=ModelPlacement(gpu_layers="all")))
    assert placed.target.model.n_gpu_layers == ALL_LAYERS and placed.target.model.offloaded_layers == 0
    a = plain.generate("The capital of France is", max_tokens=8)
    b = placed.generate("The capital of France is", max_tokens=8)
    assert a.tokens == b.tokens
    assert probe_key(placed.target.model, 5) == probe_key(plain.target.model, 5)
    assert probe_key(plain.target.model, 5)["gpu_layers"] == 0


def test_speculation_off_message_names_inexact():
    plain = Engine.load("smollm2-135m", "none", n_ctx=256, threads=1, exact=False).target.model
    off = cap_message(plain, 0)
    assert "speculation is OFF" in off and "--inexact" in off and "31 layers on CPU" in off
    capped = cap_message(plain, 2)
    assert "K is capped at 2" in capped and "--inexact" in capped


# ---- real offloading: llama.cpp's RPC backend, a device like a GPU -----------------------------------------------
@pytest.fixture(scope="module")
def rpc_worker():
    from conftest import rpc_worker_process

    with rpc_worker_process() as endpoint:
        yield endpoint


@pytest.mark.parametrize("asked", [5, ALL_LAYERS, 0])
def test_gpu_layers_offload_exactly_that_many_layers(rpc_worker, asked):
    model = open_model("smollm2-135m", n_ctx=256, exact=False, rpc_servers=[rpc_worker], gpu_layers=asked)
    try:
        total = model.n_layer + 1
        offloaded = total if asked == ALL_LAYERS else asked
        assert model.offloaded_layers == offloaded
        assert sum(model.layer_devices.values()) == total
        assert model.layer_devices.get("CPU", 0) == total - offloaded
        rpc_buffers = [mib for name, mib in model.buffers_mib.items() if name.startswith("RPC")]
        assert bool(rpc_buffers) == (offloaded > 0)  # the weights of those layers live on the worker
        if offloaded:
            assert probe_key(model, 5)["layer_devices"] == model.layer_devices  # the probe keys on where they went
    finally:
        model.close()
