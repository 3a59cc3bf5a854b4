"""The llama.cpp source quickdraft builds: llama-cpp-python's sdist with the patches of llama/patches/.

Stdlib only, so the Makefile runs it before anything is installed:

    CMAKE_ARGS="-DGGML_RPC=on" python3 src/quickdraft/llama_source.py wheel 0.3.36 OUT_DIR
    python3 src/quickdraft/llama_source.py label            # the patch set's name, for the Makefile
    python3 src/quickdraft/llama_source.py check 0.3.37     # do the patches apply to another version?

`wheel` fetches llama-cpp-python's source with pip, applies the patches to its vendor/llama.cpp with the
`patch` program, marks the version with the patch set's label (0.3.36 -> 0.3.36+quickdraft.pXXXXXXXX:
`llama-cpp-python==0.3.36` still matches it, and whoever looks at the installed version sees which patched
build it is) and builds a wheel into OUT_DIR. `llama_build` applies the same patches to the source it builds
llama.cpp's programs (rpc-server, ...) from, so a worker rounds as we do.

The patches (one unified diff each against vendor/llama.cpp, numbered in the order they apply, each with a
note saying what it changes, why and what it was measured to do) send float matrices through llamafile's
tinyBLAS for one token too, so that verifying K + 1 tokens in one batch gives the logits of one-token
decoding bit for bit, and make one token and verification batches of up to 8 tokens fast there
(docs/exactness.md, "The patches"). The label is derived from the patches' diffs (local_label), not their
notes: a changed diff names a new wheel folder, new tools and new exactness probes; a reworded note changes
nothing. Moving to a newer llama-cpp-python: bump the version, `check` it (it names the patch that no longer
applies; refresh that one), build, and measure again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# the repository's llama/patches/ (this file is src/quickdraft/llama_source.py in a checkout, and the package
# is installed from the checkout in place: `pip install -e .`)
PATCH_DIR = Path(__file__).resolve().parents[2] / "llama" / "patches"
LABEL_PREFIX = "quickdraft."


class SourceError(RuntimeError):
    """The source could not be fetched, patched or built."""


def patch_files() -> list[Path]:
    """The patch set, in the order it applies (file names: 0001-..., 0002-...)."""
    if not PATCH_DIR.is_dir():
        raise SourceError(f"quickdraft's llama.cpp patches are not at {PATCH_DIR}: build from a quickdraft "
                          "source checkout (installed with pip install -e .)")
    patches = sorted(PATCH_DIR.glob("*.patch"))
    if not patches:
        raise SourceError(f"{PATCH_DIR} holds no .patch files")
    return patches


def diff_part(patch: Path) -> bytes:
    """A patch file without its note: from its first `diff --git` line (what `git diff` writes) to the end."""
    lines = patch.read_bytes().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(b"diff --git "):
            return b"".join(lines[i:])
    raise SourceError(f"{patch.name} has no 'diff --git' line (make a patch with git diff)")


def changed_files(patch: Path) -> list[str]:
    """The files (under vendor/llama.cpp) a patch changes, from its `diff --git a/PATH b/PATH` lines."""
    files = []
    for line in diff_part(patch).decode().splitlines():
        if line.startswith("diff --git "):
            files.append(line.rsplit(" b/", 1)[-1])
    return files


def local_label() -> str:
    """The patch set's name, the wheel's local version label: "quickdraft.p" and 8 hex digits of the sha256 of
    the patches' diffs in order. A letter leads the hash: PEP 440 reads an all-digit label part as a number
    and would drop a leading zero, and the installed version would no longer match the label."""
    digest = hashlib.sha256()
    for patch in patch_files():
        digest.update(diff_part(patch))
    return f"{LABEL_PREFIX}p{digest.hexdigest()[:8]}"


def base_version(version: str) -> str:
    """0.3.36+quickdraft.p1a2b3c4d -> 0.3.36"""
    return version.split("+", 1)[0]


def is_patched(version: str) -> bool:
    """Whether an installed llama-cpp-python version is built from this checkout's patches."""
    return version.endswith("+" + local_label())


def is_quickdraft_build(version: str) -> bool:
    """Whether a version is one of quickdraft's patched builds, of this patch set or another."""
    return f"+{LABEL_PREFIX}" in version


def fetch_sdist(version: str, dest: Path) -> Path:
    """Download llama-cpp-python's source archive (from pip's cache when it is there) and unpack it in dest;
    returns the unpacked folder (the one with pyproject.toml)."""
    version = base_version(version)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"llama-cpp-python=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SourceError(f"could not download the llama-cpp-python {version} source with pip:\n{proc.stderr}")
    archive = next(dest.glob("llama_cpp_python-*.tar.gz"), None)
    if archive is None:
        raise SourceError("pip downloaded no llama-cpp-python source archive")
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    root = dest / archive.name[: -len(".tar.gz")]
    if not (root / "pyproject.toml").is_file():
        raise SourceError(f"{archive.name} does not unpack to {root.name}/")
    return root


def patch_program() -> str:
    """The `patch` program (GNU patch on Linux, BSD patch on macOS), which applies the patches."""
    found = shutil.which("patch")
    if found is None:
        raise SourceError("the patch program is not installed; it applies quickdraft's llama.cpp patches "
                          "(Debian/Ubuntu: apt-get install patch; build-essential brings it)")
    return found


def patch_llama_cpp(llama_cpp_dir: Path) -> None:
    """Apply the patch set to a llama.cpp source tree (llama-cpp-python's vendor/llama.cpp): all of it or,
    if one patch does not apply exactly (no fuzz), none. The patches are applied first, one after the other,
    to a scratch copy of the files they change (a patch may change lines an earlier one wrote, which a dry run
    against the untouched tree could not check); only when every one applied are those files copied back. An
    already patched tree is refused: its first patch reads as applied."""
    patch = patch_program()
    patches = patch_files()
    files = sorted({rel for p in patches for rel in changed_files(p)})
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for rel in files:
            if (llama_cpp_dir / rel).is_file():
                (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(llama_cpp_dir / rel, scratch / rel)
        for p in patches:
            cmd = [patch, "-p1", "--forward", "--batch", "--fuzz=0", "-d", str(scratch), "-i", str(p)]
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SourceError(f"{p.name} does not apply to {llama_cpp_dir} (already patched, or another "
                                  f"llama.cpp version?); nothing was changed:\n{proc.stdout}{proc.stderr}")
        for rel in files:
            shutil.copyfile(scratch / rel, llama_cpp_dir / rel)


def label_version(sdist_root: Path) -> str:
    """Mark the package version with the patch set's label; returns the new version."""
    init = sdist_root / "llama_cpp" / "__init__.py"
    lines = init.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("__version__ = "):
            version = line.split("=", 1)[1].strip().strip("\"'")
            labelled = f"{base_version(version)}+{local_label()}"
            lines[i] = f'__version__ = "{labelled}"\n'
            init.write_text("".join(lines))
            return labelled
    raise SourceError(f"{init} has no __version__ line")


def build_wheel(version: str, out_dir: Path) -> None:
    """The patched wheel, built with pip (CMAKE_ARGS from the environment choose the backend)."""
    patch_program()  # both before the download: a missing program or patch folder fails at once
    local_label()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = fetch_sdist(version, Path(tmp))
        patch_llama_cpp(root / "vendor" / "llama.cpp")
        labelled = label_version(root)
        names = ", ".join(p.name for p in patch_files())
        print(f">> llama-cpp-python {labelled}: applied {names}; building "
              f"with CMAKE_ARGS={os.environ.get('CMAKE_ARGS', '')!r}", flush=True)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-cache-dir", "--no-deps", str(root), "-w", str(out_dir)]
        if subprocess.run(cmd).returncode != 0:
            raise SourceError("the llama-cpp-python build failed (its output is above)")


def check(version: str) -> None:
    """Fetch a llama-cpp-python version's source and apply the patches to it, in a folder thrown away after."""
    patch_program()
    with tempfile.TemporaryDirectory() as tmp:
        root = fetch_sdist(version, Path(tmp))
        patch_llama_cpp(root / "vendor" / "llama.cpp")
    print(f"the {len(patch_files())} patches of {PATCH_DIR} apply to llama-cpp-python {base_version(version)}")


def main(argv: list[str]) -> int:
    commands = {("wheel", 3): lambda: build_wheel(argv[1], Path(argv[2])),
                ("label", 1): lambda: print(local_label()),
                ("check", 2): lambda: check(argv[1])}
    command = commands.get((argv[0] if argv else "", len(argv)))
    if command is None:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        command()
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
