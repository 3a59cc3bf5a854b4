"""The GGUF models already on this machine, wherever the user's other tools put them.

Where we look (each root can be replaced through `SearchRoots`, or its environment variable):
- quickdraft's own names (`model_store`: the demo packages, copies under QUICKDRAFT_CACHE/models);
- LM Studio: ~/.lmstudio/models and ~/.cache/lm-studio/models (QUICKDRAFT_LMSTUDIO_MODELS), <publisher>/<repo>/*.gguf;
- Ollama: ~/.ollama/models and /usr/share/ollama/.ollama/models (OLLAMA_MODELS, Ollama's own variable): each
  manifest manifests/<registry>/<namespace>/<model>/<tag> names a layer of media type
  application/vnd.ollama.image.model whose digest is the file blobs/sha256-<hex>; named model:tag;
- the Hugging Face hub cache: $HF_HUB_CACHE, or $HF_HOME/hub, or ~/.cache/huggingface/hub:
  models--<org>--<name>/snapshots/<revision>/**/*.gguf, named org/name/file;
- QUICKDRAFT_MODELS (folders or files, separated like PATH) and folders given with `--models DIR`.

Nothing is loaded: metadata comes from `gguf_info` (cached). A file that cannot be read, is not a GGUF, or is
not a language model (a vision projector, a LoRA adapter) is skipped with its reason in `Discovery.skipped`;
nothing raises. The same file found twice (a symlink, another snapshot) is listed once, under the first name
found. A split model (name-00001-of-00003.gguf ...) is one model, named without the suffix.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

from quickdraft.gguf_info import ModelInfo, try_read_infos

OLLAMA_MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
OLLAMA_DEFAULT_REGISTRY = "registry.ollama.ai"
MAX_WALK_DEPTH = 6


@dataclass
class SearchRoots:
    """Where to look. `None` for a list means its default locations; an empty list means nowhere."""

    quickdraft_names: bool = True
    lmstudio: list[Path] | None = None
    ollama: list[Path] | None = None
    huggingface: list[Path] | None = None
    paths: list[Path] = field(default_factory=list)  # folders or files, searched first
    use_env: bool = True  # add QUICKDRAFT_MODELS to `paths`

    def resolved(self, env: Mapping[str, str] | None = None, home: Path | None = None) -> SearchRoots:
        """Every None replaced by the default locations for this environment."""
        env = os.environ if env is None else env
        home = Path.home() if home is None else home
        return SearchRoots(
            quickdraft_names=self.quickdraft_names,
            lmstudio=self.lmstudio if self.lmstudio is not None else default_lmstudio(env, home),
            ollama=self.ollama if self.ollama is not None else default_ollama(env, home),
            huggingface=self.huggingface if self.huggingface is not None else default_huggingface(env, home),
            paths=list(self.paths) + (env_paths(env) if self.use_env else []),
            use_env=False,
        )

    @classmethod
    def only(cls, *paths: str | os.PathLike) -> SearchRoots:
        """Just these folders or files: no default location (tests, `--models DIR --only`)."""
        return cls(quickdraft_names=False, lmstudio=[], ollama=[], huggingface=[], paths=[Path(p) for p in paths],
                   use_env=False)


@dataclass
class FoundModel:
    name: str  # how the user's tool names it: "qwen2.5:14b", "Qwen/Qwen2.5-0.5B-Instruct-GGUF/q4_k_m.gguf"
    source: str  # quickdraft | path | lmstudio | ollama | huggingface
    path: Path
    info: ModelInfo

    def to_dict(self) -> dict:
        i = self.info
        return {
            "name": self.name, "source": self.source, "path": str(self.path), "architecture": i.architecture,
            "params": i.n_params, "params_label": i.params_label, "quantization": i.file_type,
            "file_size": i.file_size, "context_length": i.context_length, "n_vocab": i.n_vocab,
            "vocab_fingerprint": i.vocab_fingerprint, "chat_template": i.has_chat_template,
            "n_layers": i.n_layers,
        }


@dataclass
class Discovery:
    models: list[FoundModel]
    skipped: list[tuple[str, str]]  # (path, why)


# ---- default locations -------------------------------------------------------------------------------------
def _split_env(value: str | None) -> list[Path]:
    return [Path(p).expanduser() for p in (value or "").split(os.pathsep) if p.strip()]


def env_paths(env: Mapping[str, str]) -> list[Path]:
    return _split_env(env.get("QUICKDRAFT_MODELS"))


def default_lmstudio(env: Mapping[str, str], home: Path) -> list[Path]:
    if env.get("QUICKDRAFT_LMSTUDIO_MODELS"):
        return _split_env(env["QUICKDRAFT_LMSTUDIO_MODELS"])
    return [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]


def default_ollama(env: Mapping[str, str], home: Path) -> list[Path]:
    if env.get("OLLAMA_MODELS"):
        return _split_env(env["OLLAMA_MODELS"])
    return [home / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]


def default_huggingface(env: Mapping[str, str], home: Path) -> list[Path]:
    if env.get("HF_HUB_CACHE"):
        return [Path(env["HF_HUB_CACHE"]).expanduser()]
    if env.get("HF_HOME"):
        return [Path(env["HF_HOME"]).expanduser() / "hub"]
    return [home / ".cache" / "huggingface" / "hub"]


# ---- candidates: (name, source, path), no file opened -----------------------------------------------------------
def walk_gguf(root: Path, max_depth: int = MAX_WALK_DEPTH) -> Iterator[Path]:
    """*.gguf files under a folder (or the file itself), sorted, symlinked files included."""
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        return
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
        dirnames.sort()
        if len(Path(dirpath).parts) - base_depth >= max_depth:
            dirnames.clear()
        for f in sorted(filenames):
            if f.lower().endswith(".gguf") and not _later_split_part(f):
                yield Path(dirpath) / f


_SPLIT_PART = re.compile(r"-(\d{5})-of-\d{5}\.gguf$", re.IGNORECASE)


def _later_split_part(filename: str) -> bool:
    """model-00002-of-00003.gguf: part of the model whose first part is listed (gguf_info reads them all)."""
    m = _SPLIT_PART.search(filename)
    return bool(m) and int(m[1]) > 1


def model_stem(path: Path) -> str:
    """A file's name without .gguf, or without -00001-of-0000N.gguf for a split model."""
    return _SPLIT_PART.sub("", path.name) if _SPLIT_PART.search(path.name) else path.stem


def quickdraft_candidates() -> Iterator[tuple[str, str, Path]]:
    from quickdraft import model_store

    for name in model_store.known_names():
        try:
            yield name, "quickdraft", model_store.resolve(name, progress=False, derive_missing=False)
        except Exception:  # not installed / not made yet: simply not there
            continue
    models_dir = model_store.cache_dir() / "models"
    for path in walk_gguf(models_dir, max_depth=1):
        yield path.stem, "quickdraft", path


def path_candidates(roots: list[Path]) -> Iterator[tuple[str, str, Path]]:
    for root in roots:
        root = Path(root).expanduser()
        if not root.exists():  # a folder the user named: say so (default locations may well be absent)
            raise FileNotFoundError(2, "no such file or folder")
        for path in walk_gguf(root):
            yield model_stem(path), "path", path


def lmstudio_candidates(roots: list[Path]) -> Iterator[tuple[str, str, Path]]:
    """<root>/<publisher>/<repo>/<file>.gguf, named publisher/repo/file."""
    for root in roots:
        for path in walk_gguf(root):
            rel = path.relative_to(root)
            yield str(rel.parent / model_stem(path)), "lmstudio", path


def ollama_candidates(roots: list[Path], skipped: list) -> Iterator[tuple[str, str, Path]]:
    for root in roots:
        manifests = root / "manifests"
        if not manifests.is_dir():
            continue
        for manifest in sorted(p for p in manifests.rglob("*") if p.is_file()):
            rel = manifest.relative_to(manifests).parts
            if len(rel) != 4:
                continue
            try:
                digest = ollama_model_digest(json.loads(manifest.read_text()))
            except (OSError, ValueError) as e:
                skipped.append((str(manifest), f"unreadable Ollama manifest: {e}"))
                continue
            if digest is None:
                skipped.append((str(manifest), "Ollama manifest without a model layer"))
                continue
            blob = root / "blobs" / digest.replace(":", "-")
            if not blob.is_file():
                skipped.append((str(manifest), f"Ollama blob missing: {blob.name}"))
                continue
            yield ollama_name(*rel), "ollama", blob


def ollama_model_digest(manifest: dict) -> str | None:
    """The digest ("sha256:<hex>") of the manifest's model layer."""
    for layer in manifest.get("layers", []):
        if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL_MEDIA_TYPE:
            digest = str(layer.get("digest", ""))
            return digest if digest.startswith("sha256") else None
    return None


def ollama_name(registry: str, namespace: str, model: str, tag: str) -> str:
    """The name `ollama run` takes: qwen2.5:14b, user/model:tag, host/ns/model:tag."""
    if registry == OLLAMA_DEFAULT_REGISTRY:
        return f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"
    return f"{registry}/{namespace}/{model}:{tag}"


def huggingface_candidates(roots: list[Path]) -> Iterator[tuple[str, str, Path]]:
    for root in roots:
        if not root.is_dir():
            continue
        for repo in sorted(root.glob("models--*")):
            repo_id = repo.name.removeprefix("models--").replace("--", "/")
            for path in walk_gguf(repo / "snapshots"):
                rel = path.relative_to(repo / "snapshots")
                yield f"{repo_id}/{Path(*rel.parts[1:])}", "huggingface", path


def candidates(roots: SearchRoots, skipped: list) -> Iterator[tuple[str, str, Path]]:
    """Every root's candidates; a root we may not read (another user's Ollama store) is skipped, not fatal."""
    searches = [(path_candidates, [p]) for p in roots.paths]
    searches += [(lmstudio_candidates, [p]) for p in roots.lmstudio or []]
    searches += [(lambda r: ollama_candidates(r, skipped), [p]) for p in roots.ollama or []]
    searches += [(huggingface_candidates, [p]) for p in roots.huggingface or []]
    if roots.quickdraft_names:
        yield from quickdraft_candidates()
    for search, root in searches:
        try:
            yield from search(root)
        except OSError as e:
            skipped.append((str(root[0]), f"cannot search: {e.strerror or e}"))


# ---- discovery ---------------------------------------------------------------------------------------------------
def discover(roots: SearchRoots | None = None, *, use_cache: bool = True) -> Discovery:
    """Every language model found, once each, with its metadata; what was skipped and why."""
    roots = (roots or SearchRoots()).resolved()
    skipped: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()
    found: list[tuple[str, str, Path]] = []
    for name, source, path in candidates(roots, skipped):
        try:
            st = path.stat()  # through symlinks: one file under several names (or hard links) is seen once
        except OSError as e:
            skipped.append((str(path), f"unreadable: {e.strerror or e}"))
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            found.append((name, source, path))
    models = []
    for (name, source, path), info in zip(found, try_read_infos([p for _, _, p in found], use_cache=use_cache)):
        if isinstance(info, Exception):
            skipped.append((str(path), str(info)))
        elif not info.is_language_model:
            skipped.append((str(path), f"not a language model: {info.kind}, {info.n_vocab} tokens, "
                                       f"{info.n_layers} layers"))
        else:
            models.append(FoundModel(name, source, path, info))
    return Discovery(models, skipped)


def found_model(path: str | os.PathLike, name: str | None = None) -> FoundModel:
    """A model the user named by path, described like a discovered one (raises GGUFInfoError)."""
    from quickdraft.gguf_info import read_info

    path = Path(path)
    return FoundModel(name or model_stem(path), "path", path, read_info(path))


def by_vocabulary(models: list[FoundModel]) -> list[list[FoundModel]]:
    """Groups of models sharing a vocabulary (any of them can draft for a larger one), largest first."""
    groups: dict[str, list[FoundModel]] = {}
    for m in models:
        groups.setdefault(m.info.vocab_fingerprint, []).append(m)
    ordered = [sorted(g, key=lambda m: (-m.info.n_params, -m.info.file_size, m.name)) for g in groups.values()]
    return sorted(ordered, key=lambda g: (-g[0].info.n_params, g[0].name))


# ---- the report (`quickdraft models`) ----------------------------------------------------------------------------
def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def render(found: Discovery, console=None) -> None:
    """A table per vocabulary: the models in one table can draft for each other (the smaller for the larger)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not found.models:
        console.print("no GGUF models found (quickdraft models --help lists where we look)")
    for i, group in enumerate(by_vocabulary(found.models), 1):
        head = group[0].info
        title = f"vocabulary {i}: {head.n_vocab:,} tokens, {head.tokenizer_model}, {head.vocab_fingerprint[:12]}"
        table = Table(title=title, title_justify="left")
        for col in ("name", "source", "arch", "params", "quant", "size", "ctx", "template"):
            table.add_column(col, justify="right" if col in ("params", "size", "ctx") else "left",
                             overflow="fold", no_wrap=col != "name")
        for m in group:
            info = m.info
            table.add_row(m.name, m.source, info.architecture, info.params_label, info.file_type,
                          _size(info.file_size), f"{info.context_length:,}", "yes" if info.has_chat_template else "no")
        console.print(table)
    for path, why in found.skipped:
        console.print(f"[yellow]skipped[/] {path}: {why}", highlight=False)
