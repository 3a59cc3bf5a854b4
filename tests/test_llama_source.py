"""The patched llama.cpp source (quickdraft.llama_source): the patches apply once and only to the text they
were written for, the version is labelled, and the llama-cpp-python installed by the Makefile is that build.
Whether the patched kernels are exact is what test_llama_reference / test_greedy_exact check end to end."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

from quickdraft import llama_source


def shipped_tree(root: Path) -> Path:
    """A llama.cpp tree holding, in each patched file, the shipped text the patches look for."""
    for rel, old, _new in llama_source.PATCHES:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = path.read_text() if path.exists() else "// before\n"
        path.write_text(text + old + "// between\n")
    return root


def test_patches_apply_once_and_leave_the_rest(tmp_path):
    root = shipped_tree(tmp_path)
    llama_source.patch_llama_cpp(root)
    for rel, old, new in llama_source.PATCHES:
        text = (root / rel).read_text()
        assert new in text and old not in text
        assert text.startswith("// before\n") and text.count("// between\n") == sum(
            1 for r, _, _ in llama_source.PATCHES if r == rel)
    with pytest.raises(llama_source.SourceError, match="not there once"):
        llama_source.patch_llama_cpp(root)  # already patched: refused, not patched twice


def test_another_llama_cpp_is_refused_not_half_patched(tmp_path):
    root = shipped_tree(tmp_path)
    rel, last_old, _ = llama_source.PATCHES[-1]
    changed = (root / rel).read_text().replace(last_old, "// another llama.cpp's text\n")
    (root / rel).write_text(changed)  # every other patch's text is there: none may be applied
    before = {r: (root / r).read_text() for r, _, _ in llama_source.PATCHES}
    with pytest.raises(llama_source.SourceError, match="another llama.cpp version"):
        llama_source.patch_llama_cpp(root)
    assert {r: (root / r).read_text() for r in before} == before  # nothing written


def test_the_version_says_it_is_patched(tmp_path):
    init = tmp_path / "llama_cpp" / "__init__.py"
    init.parent.mkdir()
    init.write_text('from .llama_cpp import *\n\n__version__ = "0.3.36"\n')
    labelled = llama_source.label_version(tmp_path)
    assert labelled == f"0.3.36+{llama_source.LOCAL_LABEL}"
    assert f'__version__ = "{labelled}"' in init.read_text()
    assert llama_source.is_patched(labelled) and not llama_source.is_patched("0.3.36")
    assert llama_source.base_version(labelled) == "0.3.36"


def test_the_installed_build_is_the_patched_one():
    """`make install` builds llama-cpp-python from the patched source (a wheel given with LLAMA_WHEEL= is
    the user's own: nothing to check then)."""
    installed = version("llama-cpp-python")
    if not llama_source.is_patched(installed):
        pytest.skip(f"llama-cpp-python {installed} is not quickdraft's build (LLAMA_WHEEL=...)")
    from quickdraft.llama_model import system_info

    assert "LLAMAFILE = 1" in system_info()["system_info"]
