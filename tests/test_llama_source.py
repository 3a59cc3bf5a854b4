"""The patched llama.cpp source (quickdraft.llama_source, llama/patches/): the patches apply once, all or none,
only to the text they were written for; each says what it does; the version label is derived from them, and
the llama-cpp-python installed by the Makefile is that build. Whether the patched kernels are exact is what
test_llama_reference / test_greedy_exact check end to end. No network: a tree holding the text each hunk
expects stands for llama.cpp (the real source, fetched by `llama_source.py check 0.3.36`, is checked where
llama_build already unpacked it)."""

from __future__ import annotations

import re
import shutil
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.version import Version

from quickdraft import llama_build, llama_source

BEFORE, BETWEEN = "// before\n", "// between\n"


def hunks(patch: Path) -> list[tuple[str, str, str]]:
    """(file, text before, text after) of each hunk of a patch: its context and removed lines, then its context
    and added lines."""
    found: list[tuple[str, str, str]] = []
    rel, hunk = "", None
    for line in llama_source.diff_part(patch).decode().splitlines(keepends=True):
        if line.startswith("diff --git "):
            rel, hunk = line.rsplit(" b/", 1)[1].strip(), None
        elif line.startswith("@@"):
            hunk = [rel, "", ""]
            found.append(hunk)
        elif hunk is not None and line[:1] in (" ", "-", "+"):
            hunk[1] += line[1:] if line[0] != "+" else ""
            hunk[2] += line[1:] if line[0] != "-" else ""
    return [tuple(h) for h in found]


def all_hunks() -> list[tuple[str, str, str]]:
    return [h for p in llama_source.patch_files() for h in hunks(p)]


def shipped_tree(root: Path) -> Path:
    """A llama.cpp tree holding, in each patched file, the shipped text each hunk looks for (patch by patch, in
    their order), with lines of our own around it."""
    for rel, before, _after in all_hunks():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = path.read_text() if path.exists() else BEFORE
        path.write_text(text + before + BETWEEN)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_patch_set_is_numbered_and_each_patch_says_what_why_and_measured():
    patches = llama_source.patch_files()
    assert [p.name[:5] for p in patches] == [f"{i:04d}-" for i in range(1, len(patches) + 1)]
    for p in patches:
        note = p.read_text()[: -len(llama_source.diff_part(p).decode())]
        assert note.startswith("Subject: [PATCH ") and "docs/exactness.md" in note, p.name
        assert all(f"\n{word}" in note for word in ("What:", "Why", "Measured")), p.name
        assert hunks(p) and all(rel.startswith("ggml/") for rel, _, _ in hunks(p)), p.name  # vendor/llama.cpp paths


def test_patches_apply_once_and_leave_the_rest(tmp_path):
    root = shipped_tree(tmp_path)
    llama_source.patch_llama_cpp(root)
    for rel, _before, after in all_hunks():
        text = (root / rel).read_text()
        assert after in text
        assert text.startswith(BEFORE) and text.count(BETWEEN) == sum(1 for r, _, _ in all_hunks() if r == rel)
    patched = snapshot(root)
    with pytest.raises(llama_source.SourceError, match="0001-.*already patched"):
        llama_source.patch_llama_cpp(root)  # refused, not patched twice (nor reversed)
    assert snapshot(root) == patched


def test_another_llama_cpp_is_refused_not_half_patched(tmp_path):
    root = shipped_tree(tmp_path)
    last = llama_source.patch_files()[-1]
    rel, before, _ = hunks(last)[-1]
    changed = (root / rel).read_text().replace(before, "// another llama.cpp's text\n")
    (root / rel).write_text(changed)  # every other patch's text is there: none may be applied
    shipped = snapshot(root)
    with pytest.raises(llama_source.SourceError, match=f"{last.name}.*another llama.cpp version"):
        llama_source.patch_llama_cpp(root)
    assert snapshot(root) == shipped  # nothing written


def test_the_patches_apply_to_the_pinned_source(tmp_path):
    """llama-cpp-python's own vendor/llama.cpp, where `bench --against llama.cpp` had llama_build unpack it
    (stock); `python3 src/quickdraft/llama_source.py check 0.3.36` checks it anywhere, with pip."""
    stock = llama_build.tools_dir(stock=True) / "src"
    files = sorted({rel for rel, _, _ in all_hunks()})
    if not all((stock / rel).is_file() for rel in files):
        pytest.skip(f"no stock llama.cpp source unpacked at {stock}")
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stock / rel, tmp_path / rel)
    llama_source.patch_llama_cpp(tmp_path)
    for rel, _before, after in all_hunks():
        assert after in (tmp_path / rel).read_text()


def test_the_label_is_derived_from_the_diffs_not_the_notes(tmp_path, monkeypatch):
    label = llama_source.local_label()
    assert re.fullmatch(r"quickdraft\.p[0-9a-f]{8}", label)
    assert str(Version(f"0.3.36+{label}")) == f"0.3.36+{label}"  # PEP 440 keeps it as written
    copy = tmp_path / "patches"
    shutil.copytree(llama_source.PATCH_DIR, copy)
    monkeypatch.setattr(llama_source, "PATCH_DIR", copy)
    assert llama_source.local_label() == label
    first = llama_source.patch_files()[0]
    first.write_text(first.read_text().replace("What:", "What (reworded):", 1))
    assert llama_source.local_label() == label  # a note changes nothing
    first.write_text(first.read_text().replace("\n+    // quickdraft", "\n+    // Quickdraft", 1))
    assert llama_source.local_label() != label  # a diff does: a new wheel, new tools, new probes


def test_a_missing_patch_folder_or_patch_program_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(llama_source, "PATCH_DIR", tmp_path / "nowhere")
    with pytest.raises(llama_source.SourceError, match="patches are not at .*nowhere"):
        llama_source.local_label()
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(llama_source.SourceError, match="apt-get install patch"):
        llama_source.patch_llama_cpp(tmp_path)


def test_the_version_says_it_is_patched(tmp_path):
    init = tmp_path / "llama_cpp" / "__init__.py"
    init.parent.mkdir()
    init.write_text('from .llama_cpp import *\n\n__version__ = "0.3.36"\n')
    labelled = llama_source.label_version(tmp_path)
    assert labelled == f"0.3.36+{llama_source.local_label()}"
    assert f'__version__ = "{labelled}"' in init.read_text()
    assert llama_source.is_patched(labelled) and not llama_source.is_patched("0.3.36")
    assert not llama_source.is_patched("0.3.36+quickdraft.6")  # another patch set
    assert llama_source.base_version(labelled) == "0.3.36"


def test_tools_are_not_built_for_a_wheel_of_other_patches(tmp_path, monkeypatch):
    """An rpc-server built from this checkout's patches next to a wheel built from others would round
    differently from it: refused before anything is fetched."""
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path))
    monkeypatch.setattr(llama_build, "llama_cpp_python_version", lambda: "0.3.36+quickdraft.6")
    with pytest.raises(llama_build.BuildError, match="other llama.cpp patches.*make install"):
        llama_build._source_dir(lambda msg: None, stock=False)


def test_the_installed_build_is_the_patched_one():
    """`make install` builds llama-cpp-python from the patched source (a wheel given with LLAMA_WHEEL= is
    the user's own: nothing to check then); a quickdraft build of other patches is stale."""
    installed = version("llama-cpp-python")
    if not llama_source.is_quickdraft_build(installed):
        pytest.skip(f"llama-cpp-python {installed} is not quickdraft's build (LLAMA_WHEEL=...)")
    assert llama_source.is_patched(installed), (
        f"llama-cpp-python {installed} was built from other patches than llama/patches/ "
        f"({llama_source.local_label()}): `make install` rebuilds it")
    from quickdraft.llama_model import system_info

    assert "LLAMAFILE = 1" in system_info()["system_info"]
