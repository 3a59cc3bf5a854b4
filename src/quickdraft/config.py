"""The configuration of `quickdraft serve`: one pydantic model, filled in four layers.

    defaults below  <  YAML file  <  QUICKDRAFT_* environment variables  <  command-line flags

The YAML file (`--config FILE`, or the path in QUICKDRAFT_CONFIG) has the same shape as `Config`:

    models:   {target: auto, draft: auto, k: 4, ctx: 4096}
    sampling: {temperature: 0.0, max_tokens: 512}
    server:   {host: 127.0.0.1, port: 8088, api_key: null, limits: {queue_size: 16}}
    placement: {target: {gpu_layers: auto}, draft: {gpu_layers: all, main_gpu: 0, threads: 2}}

Environment variables name a key by its path, sections joined by a double underscore:
QUICKDRAFT_SERVER__PORT=9000, QUICKDRAFT_MODELS__DRAFT=ngram, QUICKDRAFT_SERVER__LIMITS__QUEUE_SIZE=4.
QUICKDRAFT_API_KEY is a short name for QUICKDRAFT_SERVER__API_KEY. Values are plain strings that pydantic
converts ("9000" -> 9000, "true" -> True); an empty value means null. Other QUICKDRAFT_* variables without
a double underscore (QUICKDRAFT_CACHE, QUICKDRAFT_LLAMA_LOG) are not config keys and are left alone.

`quickdraft config show` prints the effective result.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from quickdraft.cluster import ClusterConfig
from quickdraft.errors import QuickdraftError
from quickdraft.placement import Placement

if TYPE_CHECKING:
    from quickdraft.engine import Engine

# The bundled demo: what `quickdraft serve` (and `make serve`) runs with no arguments.
DEFAULT_TARGET = "auto"  # the planner's choice among the models on this machine (quickdraft plan)
DEFAULT_DRAFT = "auto"

ENV_PREFIX = "QUICKDRAFT_"
ENV_CONFIG_FILE = "QUICKDRAFT_CONFIG"
ENV_ALIASES = {"QUICKDRAFT_API_KEY": "server.api_key", "QUICKDRAFT_NODE_KEY": "nodes.key"}


class ConfigError(QuickdraftError):
    """The configuration is invalid: a bad file, key or value."""


class _Section(BaseModel):
    # a misspelt key in the YAML file is an error, not a silently ignored line
    model_config = ConfigDict(extra="forbid")


class ModelsConfig(_Section):
    target: str = Field(DEFAULT_TARGET, description="target model: a .gguf path, a model name, node://HOST:PORT, or auto (the planner's choice "
                        "among the models found on this machine: quickdraft plan)")
    draft: str = Field(
        DEFAULT_DRAFT,
        description="auto (adaptive), ngram (prompt lookup), none (target alone), a draft model path or name, "
        "or node://HOST:PORT",
    )
    k: int = Field(4, ge=1, le=16, description="draft tokens per round")
    threads: int | None = Field(None, ge=1, description="CPU threads per model (null: physical cores)")
    ctx: int = Field(4096, ge=32, description="context size in tokens")
    chat_template: str | None = Field(
        None, description="force a named chat template (gemma, chatml, llama3); null: the model's own"
    )
    name: str | None = Field(None, description="the model id clients see in /v1/models (null: from target)")
    exact: bool = Field(
        True,
        description="greedy output token for token llama.cpp's own (flash attention off, K capped to what this "
        "machine verifies bit-exactly); false: llama.cpp's faster defaults, equal only up to rounding",
    )

    def served_name(self, loaded: str | None = None) -> str:
        """The model id clients see: `name`, else the target's (for target auto, the loaded model's name)."""
        if self.name:
            return self.name
        if self.target == "auto" and loaded:
            return Path(loaded).stem if loaded.endswith(".gguf") else loaded
        path = Path(self.target)
        return path.stem if path.suffix == ".gguf" else self.target

    def load_engine(self, nodes: "NodesConfig | None" = None, placement: Placement | None = None, *,
                    target_node: str | None = None) -> "Engine":
        """target_node: where `target` runs when serve started it in a node of its own (node.supervisor)."""
        from quickdraft.engine import Engine

        nodes = nodes or NodesConfig()
        return Engine.load(
            target_node or nodes.keyed(self.target),
            nodes.keyed(self.draft),
            k=self.k,
            n_ctx=self.ctx,
            threads=self.threads,
            chat_template=self.chat_template,
            exact=self.exact,
            rpc_servers=() if target_node else nodes.rpc,
            placement=placement,
            draft_for=self.target if target_node else None,
        )


class SamplingConfig(_Section):
    """Defaults for requests that leave a field out. temperature 0 is greedy."""

    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0: off")
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1, description="completion length when a request names none")


class LimitsConfig(_Section):
    queue_size: int = Field(16, ge=0, description="generations (a request's prompts x n) that may wait while one request runs; beyond: HTTP 429")
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024, description="request body limit; beyond: HTTP 413")
    max_tokens: int = Field(4096, ge=1, description="cap on a request's max_tokens (the context caps it too)")
    max_choices: int = Field(16, ge=1, description="choices one request may ask for (prompts x n); beyond: "
                             "HTTP 400")


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8088, ge=0, le=65535)
    api_key: str | None = Field(None, description="bearer token clients must send; required off loopback")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    strict_model_name: bool = Field(
        False, description="true: a request naming another model than the served one is a 404 (false: the one "
        "model served answers any name, as llama-server does)")
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    # what browsers may do (quickdraft.server.guard; docs/server.md, "Security")
    admin_key: str | None = Field(None, description="bearer token for the admin endpoints (POST "
                                  "/v1/quickdraft/admin/swap); null: the API key. With neither, they are refused")
    cors_origins: list[str] = Field(
        default_factory=list, description="web pages allowed to call the server from a browser, by origin "
        "(http://localhost:3000; http://localhost:* for any port; * for every page: unsafe); a browser request "
        "from any other page is refused (403). Empty by default; a comma-separated string works too")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host names accepted besides localhost, 127.0.0.1 and [::1] when the "
        "server listens on a loopback address (e.g. behind a reverse proxy; * for any: unsafe, DNS rebinding)")

    @field_validator("cors_origins", "allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """QUICKDRAFT_SERVER__CORS_ORIGINS=a,b and --set server.cors_origins=a,b give a string."""
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name: it may resolve to anything

    def check_exposure(self) -> None:
        """Refuse to serve an open endpoint to the network."""
        if not self.api_key and not self.is_loopback():
            raise ConfigError(
                f"refusing to listen on {self.host} without an API key: anyone who can reach it could use "
                "the server. Set one with --api-key, server.api_key in the config file, or QUICKDRAFT_API_KEY "
                "(or listen on 127.0.0.1)."
            )


# ---- nodes and RPC workers (quickdraft.node, docs/nodes.md) ------------------------------------------------
class NodesConfig(_Section):
    """How `serve` reaches its nodes and llama.cpp RPC workers."""

    key: str | None = Field(None, description="node key the nodes were started with (QUICKDRAFT_NODE_KEY); "
                            "added to node:// addresses that name none")
    rpc: list[str] = Field(default_factory=list, description="llama.cpp rpc-server workers (HOST:PORT) that hold "
                           "a local target's layers (how many: placement.target.gpu_layers; auto: all)")
    wait: float = Field(120.0, ge=0, description="seconds serve waits for its target node and RPC workers to "
                        "come up (backoff; /health answers 503 meanwhile)")
    rpc_in_process: bool = Field(
        False, description="false: a target over RPC workers runs in a child node process that serve restarts, "
        "so a worker that dies fails the running request (503) instead of ending serve (llama.cpp aborts the "
        "process that uses a dead worker); true: in serve's own process, one loopback hop less per round")

    def keyed(self, spec: str) -> str:
        from quickdraft.node import is_node_url
        from quickdraft.node.auth import with_key

        return with_key(spec, self.key) if is_node_url(spec) else spec


class Config(_Section):
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    nodes: NodesConfig = Field(default_factory=NodesConfig)
    cluster: ClusterConfig | None = Field(None, description="a topology of workers, nodes and models "
                                          "(quickdraft.cluster, `quickdraft cluster`)")
    # each model's GPU layers, GPU and threads: placement: {target: {gpu_layers: auto, main_gpu: null,
    # threads: null}, draft: {...}} (quickdraft.placement; auto = the planner's choice with a GPU, else none)
    placement: Placement = Field(default_factory=Placement)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)

    def public_dict(self) -> dict:
        """The config as plain data with the API key masked (for `config show` and the status endpoint)."""
        data = self.model_dump(mode="json")
        for secret in ("api_key", "admin_key"):
            if data["server"][secret]:
                data["server"][secret] = "***"
        if data["nodes"]["key"]:
            data["nodes"]["key"] = "***"
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.public_dict(), sort_keys=False)


def load_config(
    path: str | os.PathLike | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """The effective config: defaults, then the YAML file, then the environment, then `overrides`
    (dotted keys, e.g. {"server.port": 9000}, from command-line flags)."""
    env = os.environ if env is None else env
    data: dict = {}
    path = path or env.get(ENV_CONFIG_FILE) or None
    if path:
        data = read_yaml(Path(path))
    apply_cluster(data)
    for dotted, value in env_overrides(env).items():
        set_key(data, dotted, value, source=f"environment variable {env_name(dotted)}")
    for dotted, value in (overrides or {}).items():
        set_key(data, dotted, value, source=f"setting {dotted}")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors(include_url=False)
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


def apply_cluster(data: dict) -> None:
    """A `cluster:` section sets serve's target, draft and workers (quickdraft.cluster) where the file does
    not set them itself; the environment and flags still win."""
    if not isinstance(data.get("cluster"), dict):
        return
    try:
        cluster = ClusterConfig.model_validate(data["cluster"])
    except ValidationError as e:
        problems = "; ".join(f"cluster.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                             for err in e.errors(include_url=False))
        raise ConfigError(f"invalid configuration: {problems}") from None
    for dotted, value in cluster.serving_overrides().items():
        section, key = dotted.split(".")
        if not isinstance(data.get(section), dict) or key not in data[section]:
            set_key(data, dotted, value, source=f"cluster topology ({dotted})")


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping (models:, sampling:, server:)")
    return data


def env_name(dotted: str) -> str:
    return ENV_PREFIX + dotted.upper().replace(".", "__")


def env_overrides(env: Mapping[str, str]) -> dict[str, str | None]:
    """QUICKDRAFT_SECTION__KEY=value -> {"section.key": value}; an empty value is null."""
    out: dict[str, str | None] = {}
    for name, value in sorted(env.items()):
        if name in ENV_ALIASES:
            dotted = ENV_ALIASES[name]
        elif name.startswith(ENV_PREFIX) and "__" in name:
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        else:
            continue
        out[dotted] = value if value != "" else None
    return out


def set_key(data: dict, dotted: str, value: Any, *, source: str) -> None:
    """data[a][b][c] = value for "a.b.c", after checking that Config has that key."""
    parts = dotted.split(".")
    model: type[BaseModel] = Config
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            known = ", ".join(".".join([*parts[:i], k]) for k in model.model_fields)
            raise ConfigError(f"{source}: no config key {dotted!r} (known here: {known})")
        annotation = field.annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if i < len(parts) - 1:
            if not is_section:
                raise ConfigError(f"{source}: {'.'.join(parts[: i + 1])} is a value, not a section")
            model = annotation
        elif is_section:
            raise ConfigError(f"{source}: {dotted} is a section; name one of its keys")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value
