"""Faults from outside: a process killed while it writes, a full disk, a damaged or truncated GGUF, a model
file deleted while it is served, a server killed mid-stream. Each is a clear error or goes unnoticed;
never a crash, a half-written file read later, or a wrong answer.

Processes are really killed and writes really fail (a file-size limit, RLIMIT_FSIZE, stands in for a full
disk without needing root); the models are the demo SmolLM2, copied or cut short in a temporary folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from quickdraft import model_store
from quickdraft.errors import ModelLoadError
from quickdraft.server.errors import APIError

MODEL = "smollm2-135m"
PROMPT = "The capital of France is"


def python(code: str, *args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300, **kwargs)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# a child process whose writes past 64 KiB fail (EFBIG), as they would on a full disk
FULL_DISK = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
"""


# ---- caches and model copies are written whole or not at all ------------------------------------------------
def test_a_writer_killed_before_its_rename_leaves_the_old_file(tmp_path):
    cache = tmp_path / "cache.json"
    cache.write_text('{"old": 1}')
    died = python("""
        import os, sys
        from pathlib import Path
        from quickdraft.atomic_file import write_atomic
        os.replace = lambda *a: os._exit(9)  # the process dies between writing and renaming
        write_atomic(Path(sys.argv[1]), '{"new": 2}')
    """, str(cache))
    assert died.returncode == 9, died.stderr
    assert cache.read_text() == '{"old": 1}'
    assert len(leftovers(tmp_path)) == 1  # the dead writer's temporary file ...
    from quickdraft.atomic_file import write_atomic

    write_atomic(cache, '{"new": 2}')
    assert json.loads(cache.read_text()) == {"new": 2}
    assert leftovers(tmp_path) == []  # ... is removed by the next writer


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    cache = tmp_path / "cache.json"
    cache.write_text('{"old": 1}')
    full = python(FULL_DISK + """
import sys
from pathlib import Path
from quickdraft.atomic_file import write_atomic
try:
    write_atomic(Path(sys.argv[1]), "x" * 1_000_000)
except OSError as e:
    print(e.strerror)
    sys.exit(3)
""", str(cache))
    assert full.returncode == 3, full.stderr
    assert cache.read_text() == '{"old": 1}' and leftovers(tmp_path) == []


@pytest.mark.parametrize("damage", ['{"files": {', "null", "[1, 2]", '{"version": 3, "files": [1]}',
                                    "BROKEN-ENTRY"])
def test_a_damaged_gguf_info_cache_is_read_again_and_rewritten(tmp_path, monkeypatch, damage):
    from quickdraft.gguf_info import CACHE_VERSION, read_info

    path = model_store.resolve(MODEL)
    cache = tmp_path / "gguf-info.json"
    monkeypatch.setenv("QUICKDRAFT_GGUF_INFO_CACHE", str(cache))
    expected = read_info(path, use_cache=False)
    if damage == "BROKEN-ENTRY":  # the file's own entry, with its stamp, holding nonsense
        st = path.absolute().stat()
        stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        damage = json.dumps({"version": CACHE_VERSION, "files": {str(path.absolute()): {"stamp": stamp, "info": 7}}})
    cache.write_text(damage)
    assert read_info(path) == expected
    entries = json.loads(cache.read_text())["files"]
    assert entries[str(path.absolute())]["info"]["vocab_fingerprint"] == expected.vocab_fingerprint


def test_a_damaged_exactness_cache_probes_again_and_is_rewritten(tmp_path, monkeypatch):
    from quickdraft import exactness
    from quickdraft.loading import open_model

    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path))
    cache = tmp_path / "exact-batch.json"
    for damage in ('{"ab', "[]", '{"x": {"max_batch": "7"}}'):
        cache.write_text(damage)
        assert exactness._read(cache) == {}
    model = open_model(MODEL, n_ctx=64, threads=1)  # a small context: the probe's short prefix only (fast)
    try:
        expected = model.max_exact_batch(2, kv_lens=exactness.PROBE_KV_LENS) - 1  # the probe, run directly
        assert exactness.exact_max_k(model, 1) == expected  # probed again despite the damaged file
        (entry,) = json.loads(cache.read_text()).values()  # which is now whole and holds the result
        assert entry["max_batch"] == expected + 1
    finally:
        model.close()


def test_a_full_disk_while_remembering_the_probe_is_a_warning(tmp_path, monkeypatch, caplog):
    from quickdraft import exactness

    def no_space(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(exactness, "write_atomic", no_space)
    exactness._remember(tmp_path / "exact-batch.json", "key", {"max_batch": 3})
    assert "cannot remember the exactness probe" in caplog.text and "No space left" in caplog.text
    assert not (tmp_path / "exact-batch.json").exists()


def prepare_q8(cache: Path) -> subprocess.Popen:
    """`quickdraft models prepare smollm2-135m-q8_0` (a copy made with llama.cpp's quantize) into `cache`."""
    return subprocess.Popen([sys.executable, "-m", "quickdraft", "models", "prepare", f"{MODEL}-q8_0"],
                            env={**os.environ, "QUICKDRAFT_CACHE": str(cache)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def interrupted_prepare(cache: Path, sig: int) -> subprocess.CompletedProcess | None:
    """Start making the copy and send `sig` while llama.cpp writes it; None if it finished first."""
    models = cache / "models"
    proc = prepare_q8(cache)
    while proc.poll() is None and not (models.is_dir() and leftovers(models)):
        time.sleep(0.01)
    if proc.poll() is not None:
        proc.communicate()
        return None
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_an_interrupted_prepare_leaves_no_model_file(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path))  # this process resolves names in the same cache
    models = tmp_path / "models"
    stopped = interrupted_prepare(tmp_path, signal.SIGINT)  # Ctrl-C
    if stopped is None:
        pytest.skip("the copy was made before it could be interrupted")
    assert stopped.returncode != 0
    assert list(models.iterdir()) == []  # neither the copy nor its temporary file

    killed = interrupted_prepare(tmp_path, signal.SIGKILL)
    if killed is None:
        pytest.skip("the copy was made before it could be killed")
    assert [p.suffix for p in models.iterdir()] == [".tmp"]  # no model file, only the dead writer's temp
    with pytest.raises(ModelLoadError, match="not made yet"):
        model_store.resolve(f"{MODEL}-q8_0", derive_missing=False)
    made = prepare_q8(tmp_path)
    assert made.wait(300) == 0, made.stderr.read()
    assert [p.name for p in models.iterdir()] == [f"{MODEL}-q8_0.gguf"]  # the temp is gone, the copy whole
    from quickdraft.loading import check_gguf

    check_gguf(models / f"{MODEL}-q8_0.gguf")


def test_a_full_disk_while_making_a_copy_is_a_clear_error(tmp_path):
    full = python(FULL_DISK + """
import sys
from quickdraft import model_store
from quickdraft.errors import ModelLoadError
try:
    model_store.resolve("%s-q8_0", progress=False)
except ModelLoadError as e:
    print(e)
    sys.exit(3)
""" % MODEL, env={"QUICKDRAFT_CACHE": str(tmp_path)})
    assert full.returncode == 3, full.stdout + full.stderr
    assert "could not convert" in full.stdout
    assert list((tmp_path / "models").iterdir()) == []


# ---- damaged model files ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> dict[str, Path]:
    """Copies of the demo model, damaged in the ways a download or a disk damages files."""
    folder = tmp_path_factory.mktemp("damaged")
    data = model_store.resolve(MODEL).read_bytes()
    files = {
        "truncated": data[: len(data) * 6 // 10],  # a download cut short: the tensors end early
        "header cut": data[:5000],  # inside the header (the vocabulary)
        "garbage header": data[:4] + os.urandom(4096) + data[4100:],
        "not gguf": os.urandom(100_000),
        "empty": b"",
    }
    out = {}
    for i, (name, content) in enumerate(files.items()):
        out[name] = folder / f"model-{i}.gguf"  # names that do not say what is wrong: the errors must
        out[name].write_bytes(content)
    return out


@pytest.mark.parametrize("kind", ["truncated", "header cut", "garbage header", "not gguf", "empty"])
def test_a_damaged_gguf_is_a_model_load_error(damaged, kind):
    from quickdraft.loading import open_model

    with pytest.raises(ModelLoadError, match=str(damaged[kind])):
        open_model(str(damaged[kind]), n_ctx=256, threads=1)


def test_llama_cpp_itself_refuses_a_truncated_gguf(damaged):
    """Below quickdraft's header check, llama.cpp's own check holds too: an error, not a crash."""
    from quickdraft.llama_model import LlamaModel

    with pytest.raises(ModelLoadError, match="could not load"):
        LlamaModel(damaged["truncated"], n_ctx=256, threads=1)


def test_the_cli_says_what_is_wrong_with_a_damaged_model(damaged):
    r = subprocess.run([sys.executable, "-m", "quickdraft", "generate", "--target", str(damaged["truncated"]),
                        "--draft", "none", "-p", "Hello"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "truncated" in r.stderr and "Traceback" not in r.stderr


def test_a_closed_model_refuses_calls_instead_of_crashing():
    from quickdraft.loading import open_model

    model = open_model(MODEL, n_ctx=256, threads=1)
    tokens = model.tokenize(PROMPT)
    model.close()
    for call in (lambda: model.evaluate(tokens), lambda: model.tokenize(PROMPT), lambda: model.reset()):
        with pytest.raises(RuntimeError, match="closed"):
            call()


# ---- the server ---------------------------------------------------------------------------------------------
def host_config(target: str):
    """Inexact: no exactness probe of the copies (each a new file to probe), which these tests do not need."""
    from quickdraft.config import Config

    return Config.model_validate({"models": {"target": target, "draft": "ngram", "threads": 1, "ctx": 512,
                                             "exact": False}})


async def started(host):
    """Run the host's lifespan startup as uvicorn does; the inbox to send its shutdown."""
    inbox: asyncio.Queue = asyncio.Queue()

    async def send(message):
        pass

    task = asyncio.create_task(host({"type": "lifespan"}, inbox.get, send))
    await inbox.put({"type": "lifespan.startup"})
    deadline = time.monotonic() + 180
    while host.state == "starting":
        assert time.monotonic() < deadline, "the engine never loaded"
        await asyncio.sleep(0.02)
    return inbox, task


async def complete(host) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=host.app), base_url="http://127.0.0.1") as c:
        return await c.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 8}, timeout=120)


def test_a_server_started_on_a_damaged_model_fails_with_the_reason(damaged):
    from quickdraft.server.startup import ServingHost

    async def main():
        stopped = []
        host = ServingHost(host_config(str(damaged["truncated"])), on_fatal=lambda: stopped.append(True))
        inbox, task = await started(host)
        assert host.state == "failed" and stopped == [True]
        assert "truncated" in host.error
        await inbox.put({"type": "lifespan.shutdown"})
        await task

    asyncio.run(main())


def test_a_model_deleted_while_served_keeps_serving_and_a_swap_to_it_is_refused(tmp_path, damaged):
    """llama.cpp maps the file: deleting it leaves the mapping (Linux), so requests go on. A swap to a deleted
    or damaged file is a 400 before anything is closed, so the running target keeps serving."""
    from quickdraft.server.startup import ServingHost

    copy = tmp_path / "smol-copy.gguf"
    shutil.copyfile(model_store.resolve(MODEL), copy)

    async def main():
        host = ServingHost(host_config(str(copy)), models={"damaged": {"path": str(damaged["truncated"])},
                                                           "smol": {"path": str(model_store.resolve(MODEL))}})
        inbox, task = await started(host)
        assert host.state == "ready", host.error
        before = await complete(host)
        assert before.status_code == 200, before.text
        copy.unlink()
        after = await complete(host)
        assert after.status_code == 200, after.text
        assert after.json()["choices"][0]["text"] == before.json()["choices"][0]["text"]
        engine = host.engine
        with pytest.raises(APIError) as refused:
            await host.swap("damaged")
        assert refused.value.status == 400 and "truncated" in refused.value.message
        assert (await host.swap("smol"))["model"] == "smol"
        with pytest.raises(APIError) as refused:
            await host.swap(str(copy))  # back to the file it started with: gone now
        assert refused.value.status == 400 and "not found" in refused.value.message
        assert host.state == "ready" and host.engine is not engine
        again = await complete(host)
        assert again.json()["choices"][0]["text"] == before.json()["choices"][0]["text"]  # the same model
        await inbox.put({"type": "lifespan.shutdown"})
        await task

    asyncio.run(main())


def test_a_server_killed_mid_stream_starts_again_and_answers_the_same(tmp_path):
    """Nothing a killed server leaves behind (its caches included) keeps the next one from serving."""
    from quickdraft.server.process import ServerProcess

    env = {"QUICKDRAFT_CACHE": str(tmp_path)}  # its own caches, inspected after the kill
    body = {"prompt": PROMPT, "max_tokens": 16}
    args = ("--target", MODEL, "--draft", "ngram", "--inexact", "--threads", "1")  # inexact: no probe to wait for
    with ServerProcess(*args, env=env) as server:
        expected = httpx.post(f"{server.base_url}/completions", json=body, timeout=120).json()["choices"][0]["text"]
        with httpx.stream("POST", f"{server.base_url}/completions", json={**body, "stream": True}, timeout=120) as r:
            assert next(r.iter_lines()).startswith("data: ")
            server.process.kill()
            server.process.wait(30)
    assert list(tmp_path.glob("*.json"))  # it wrote its caches ...
    for cache in tmp_path.glob("*.json"):
        json.loads(cache.read_text())  # ... whole
    with ServerProcess(*args, env=env) as server:
        again = httpx.post(f"{server.base_url}/completions", json=body, timeout=120).json()["choices"][0]["text"]
    assert again == expected
