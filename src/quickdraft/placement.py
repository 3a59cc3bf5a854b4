"""Where each model runs: how many of its layers llama.cpp puts on a GPU, which GPU, how many CPU threads.

The target and the draft each have one (flags `--target-gpu-layers`, `--draft-main-gpu`, `--target-threads`
... on generate, serve, bench; the config's `placement:` section):

    gpu_layers  auto (default) | all | none | N   llama.cpp's -ngl: the last N layers (the output layer
                                                 counts as one) go to the GPU, the rest stays in RAM
    main_gpu    null (default: llama.cpp spreads the offloaded layers over every GPU) | i (GPU i alone)
    threads     null (default: --threads, else the physical cores) | N

`auto` is the planner's choice (quickdraft.planner: the draft on the GPU, the target in RAM with the VRAM
left over) when this llama.cpp build computes on a GPU; with no GPU it is 0 layers, which is exactly the
CPU-only behaviour; with rpc-server workers, auto puts all the target's layers on them. auto leaves main_gpu
to llama.cpp (the planner sizes one GPU; llama.cpp may spread over more). `quickdraft node` holds one model:
`--gpu-layers`, `--main-gpu` (resolve_one). What llama.cpp really did is read back from the loaded model
(`LlamaModel.offloaded_layers`, `layer_devices`, `buffers_mib`).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from quickdraft.errors import QuickdraftError

log = logging.getLogger("quickdraft")

GpuLayers = int | Literal["auto", "all"]
ALL_LAYERS = -1  # what LlamaModel (and llama.cpp's llama_model_params) read as "every layer"
ROLES = ("target", "draft")


def parse_gpu_layers(value) -> GpuLayers:
    """"auto", "all", "none" (= 0) or a number of layers >= 0; anything else is a clear error."""
    if isinstance(value, bool):
        raise ValueError(f"gpu_layers is auto, all, none or a number of layers, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"gpu_layers must be >= 0 (or auto, all, none), got {value}")
        return value
    text = str(value).strip().lower()
    if text in ("auto", "all"):
        return text
    if text == "none":
        return 0
    if text.isdigit():
        return int(text)
    raise ValueError(f"gpu_layers is auto, all, none or a number of layers, got {value!r}")


class ModelPlacement(BaseModel):
    """One model's placement."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu_layers: GpuLayers = Field(
        "auto", description="auto (the planner's choice when llama.cpp has a GPU, else 0), all, none (0), or N "
        "layers (llama.cpp's -ngl)")
    main_gpu: int | None = Field(
        None, ge=0, description="put the offloaded layers on this GPU alone (null: spread over every GPU)")
    threads: int | None = Field(None, ge=1, description="CPU threads (null: models.threads, else physical cores)")

    @field_validator("gpu_layers", mode="before")
    @classmethod
    def _gpu_layers(cls, value):
        return parse_gpu_layers(value)


class Placement(BaseModel):
    """The target's and the draft's placements (the config's `placement:` section)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: ModelPlacement = Field(default_factory=ModelPlacement)
    draft: ModelPlacement = Field(default_factory=ModelPlacement)


@dataclass(frozen=True)
class Resolved:
    """A placement as LlamaModel takes it: gpu_layers an int (ALL_LAYERS = every layer)."""

    gpu_layers: int = 0
    main_gpu: int | None = None
    threads: int | None = None


def llama_layers(value: GpuLayers, planned: int) -> int:
    """The n_gpu_layers llama.cpp gets for a placement's gpu_layers (`planned`: what auto means here)."""
    if value == "all":
        return ALL_LAYERS
    if value == "auto":
        return planned
    return int(value)


def resolve(placement: Placement | None, *, target: str | None, draft: str | None = None, n_ctx: int = 4096,
            threads: int | None = None, rpc: bool = False) -> tuple[Resolved, Resolved]:
    """(target, draft) placements with auto worked out. target/draft: the models run in this process (a name
    or a path; None for a node:// model or no draft model); threads: what both get unless their own is set;
    rpc: the target's layers go to rpc-server workers, so auto puts all of them there."""
    placement = placement or Placement()
    needs_plan = any(p.gpu_layers == "auto" for p in (placement.target, placement.draft))
    planned = planned_layers(target, draft, n_ctx) if needs_plan else (0, 0)
    if rpc:
        planned = (ALL_LAYERS, planned[1])
    return tuple(
        Resolved(llama_layers(p.gpu_layers, layers), p.main_gpu, p.threads or threads)
        for p, layers in zip((placement.target, placement.draft), planned)
    )


def resolve_one(role: str, spec: str, gpu_layers: GpuLayers | None = None, main_gpu: int | None = None, *,
                n_ctx: int = 4096, threads: int | None = None, rpc: bool = False) -> Resolved:
    """One model alone (a `quickdraft node`): its placement as `resolve` works it out for its role."""
    one = ModelPlacement(gpu_layers="auto" if gpu_layers is None else gpu_layers, main_gpu=main_gpu, threads=threads)
    both = resolve(Placement(**{role: one}), target=spec if role == "target" else None,
                   draft=spec if role == "draft" else None, n_ctx=n_ctx, threads=threads, rpc=rpc)
    return both[ROLES.index(role)]


def planned_layers(target: str | None, draft: str | None, n_ctx: int, *, devices: tuple[str, ...] | None = None,
                   hardware=None) -> tuple[int, int]:
    """What auto means for this pair: the planner's GPU layers (quickdraft.planner.plan_pair) where llama.cpp
    computes on a GPU, else (0, 0). A draft alone (a draft node) is planned as a target of its own.
    devices, hardware: llama.cpp's GPUs and the machine (default: detected; tests pass simulated ones)."""
    from quickdraft import model_store
    from quickdraft.llama_model import gpu_devices
    from quickdraft.node import is_node_url

    target, draft = (None if spec is None or is_node_url(spec) else spec for spec in (target, draft))
    devices = gpu_devices() if devices is None else devices
    if (target is None and draft is None) or not devices:
        return 0, 0
    from quickdraft.discovery import found_model
    from quickdraft.hardware import detect
    from quickdraft.planner import plan_pair

    def found(spec: str):
        return found_model(model_store.resolve(spec), str(spec))

    try:
        if target is None:  # a draft on its own: as many of its layers on the GPU as fit
            plan = plan_pair(hardware or detect(), found(draft), None, n_ctx)
            layers = (0, plan.target.gpu_layers)
        else:
            plan = plan_pair(hardware or detect(), found(target), found(draft) if draft else None, n_ctx)
            layers = (plan.target.gpu_layers, plan.draft.gpu_layers if plan.draft else 0)
    except QuickdraftError as e:  # the planner finds no fit, or a header it cannot read
        log.warning("gpu_layers auto: no plan (%s); 0 GPU layers (set --target-gpu-layers/--draft-gpu-layers)", e)
        return 0, 0
    log.info("gpu_layers auto (planner, llama.cpp GPUs: %s): target %s, draft %s", "; ".join(devices),
             layers[0] if target else "-", layers[1] if draft else "-")
    return layers


# ---- command-line flags -----------------------------------------------------------------------------------
def gpu_layers_arg(value: str) -> GpuLayers:
    try:
        return parse_gpu_layers(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_placement_flags(parser: argparse.ArgumentParser, roles=ROLES) -> None:
    """--ROLE-gpu-layers, --ROLE-main-gpu, --ROLE-threads for each role (defaults None: the config's or auto)."""
    group = parser.add_argument_group("placement (per model; docs/gpu.md)")
    for role in roles:
        group.add_argument(f"--{role}-gpu-layers", type=gpu_layers_arg, default=None, metavar="auto|all|none|N",
                           help=f"{role} layers on the GPU (default auto: the planner's choice with a GPU, "
                           "else none)")
        group.add_argument(f"--{role}-main-gpu", type=int, default=None, metavar="I",
                           help=f"the GPU the {role}'s layers go to (default: spread over all GPUs)")
        group.add_argument(f"--{role}-threads", type=int, default=None, metavar="N",
                           help=f"CPU threads of the {role} (default: --threads)")


def placement_flag_keys(roles=ROLES) -> dict[str, str]:
    """argparse dest -> config key (placement.ROLE.FIELD) of every placement flag."""
    return {f"{role}_{field}": f"placement.{role}.{field}"
            for role in roles for field in ("gpu_layers", "main_gpu", "threads")}


def placement_from_args(args: argparse.Namespace, base: Placement | None = None) -> Placement:
    """The placement the flags ask for, over `base` (defaults: auto everywhere)."""
    base = base or Placement()
    roles = {}
    for role in ROLES:
        current = getattr(base, role)
        update = {field: getattr(args, f"{role}_{field}", None) for field in ("gpu_layers", "main_gpu", "threads")}
        roles[role] = ModelPlacement(**{**current.model_dump(), **{k: v for k, v in update.items() if v is not None}})
    return Placement(**roles)
