"""Hardening II (issue 20), local models: odd entries in the model folders (Ollama, LM Studio, the
Hugging Face cache) are skipped with a warning naming them, never a crash of `models`, `doctor` or
`--model`; odd hub references are usage errors before any network; --threads is bounded; odd model
files are one-line errors, with no hang and no huge allocation. Stores are real files in tmp_path,
laid out as each tool lays them out."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from ponder.gguf_header import NotGguf, read_metadata
from tests.support.cli import ponder_env, run_ponder
from tests.support.hub import LocalHub
from tests.test_models_cli import _blob_name, hub_repo

MODEL_LAYER = "application/vnd.ollama.image.model"


def warnings_of(result) -> list[str]:
    return [line for line in result.stderr.decode().splitlines() if line.startswith("ponder: warning: skipped ")]


def assert_clean(result, code: int, *expected: str) -> str:
    err = result.stderr.decode()
    assert result.returncode == code, (result.returncode, err)
    assert "Traceback" not in err and "unexpected error" not in err, err
    for text in expected:
        assert text in err, err
    return err


def listed(env) -> tuple[dict, list[str]]:
    result = run_ponder("models", "--json", env=env, timeout=60)
    assert_clean(result, 0)
    return {m["name"]: m for m in json.loads(result.stdout)}, warnings_of(result)


def skipped(warnings: list[str], path) -> str:
    """The one warning that names `path`."""
    named = [w for w in warnings if w.startswith(f"ponder: warning: skipped {path}:")]
    assert len(named) == 1, (path, warnings)
    return named[0]


@pytest.fixture
def env(tmp_path):
    (tmp_path / "home").mkdir()
    return ponder_env(HOME=str(tmp_path / "home"), OLLAMA_MODELS=str(tmp_path / "ollama"),
                      HF_HUB_CACHE=str(tmp_path / "hub"), PONDER_CONFIG=str(tmp_path / "config.toml"))


def manifest(root: Path, model: str, content, host="registry.ollama.ai", namespace="library", tag="latest") -> Path:
    path = root / "manifests" / host / namespace / model / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.fixture
def odd_ollama(env, tmp_path, tiny_r1_random):
    """An Ollama store with one good model (the tiny R1) and a manifest of every odd kind."""
    root = tmp_path / "ollama"
    digest = _blob_name(tiny_r1_random)
    (root / "blobs").mkdir(parents=True)
    os.symlink(tiny_r1_random, root / "blobs" / f"sha256-{digest}")
    good = {"layers": [{"mediaType": MODEL_LAYER, "digest": f"sha256:{digest}"}]}
    manifest(root, "good", good)
    odd = {
        "layers-string": manifest(root, "layers-string", {"layers": "oops"}),
        "layers-ints": manifest(root, "layers-ints", {"layers": [1, 2]}),
        "digest-int": manifest(root, "digest-int", {"layers": [{"mediaType": MODEL_LAYER, "digest": 42}]}),
        "digest-path": manifest(root, "digest-path", {"layers": [{"mediaType": MODEL_LAYER,
                                                                  "digest": "sha256:../../../../etc/passwd"}]}),
        "no-blob": manifest(root, "no-blob", {"layers": [{"mediaType": MODEL_LAYER, "digest": "sha256:" + "0" * 64}]}),
        "not-json": manifest(root, "not-json", "layers: none"),
        "a-list": manifest(root, "a-list", [good]),
        "not-utf8": manifest(root, "not-utf8", b"\xff\xfe{}"),
        "a-directory": manifest(root, "a-directory", None),
        "a-fifo": manifest(root, "a-fifo", None),
        "dangling": manifest(root, "dangling", None),
        "loop": manifest(root, "loop", None),
    }
    odd["a-directory"].mkdir()
    os.mkfifo(odd["a-fifo"])
    os.symlink(tmp_path / "nowhere", odd["dangling"])
    os.symlink(odd["loop"], odd["loop"])
    manifest(root, "cloud", {"layers": []})  # no model layer (an Ollama cloud model): silently not a local model
    return root, odd


def test_odd_ollama_manifests_are_skipped_with_a_warning(env, odd_ollama):
    root, odd = odd_ollama
    found, warnings = listed(env)
    assert set(found) == {"good:latest"}
    assert len(warnings) == len(odd)
    reasons = {name: skipped(warnings, path) for name, path in odd.items()}
    assert "layers are not a list of objects" in reasons["layers-string"] + reasons["layers-ints"]
    assert "digest 42 is not sha256" in reasons["digest-int"] and "etc/passwd" in reasons["digest-path"]
    assert "model blob" in reasons["no-blob"] and "is missing" in reasons["no-blob"]
    assert "not JSON" in reasons["not-json"] and "a JSON list, not an object" in reasons["a-list"]
    assert "not UTF-8" in reasons["not-utf8"] and "is a directory" in reasons["a-directory"]
    assert "not a regular file" in reasons["a-fifo"] and "a broken link" in reasons["dangling"]
    assert "in a loop" in reasons["loop"]

    doctor = run_ponder("doctor", env=env, timeout=60)
    assert_clean(doctor, 0)
    assert "models found: 1 " in doctor.stdout.decode() and len(warnings_of(doctor)) == len(odd)

    answer = run_ponder("ask", "--model", "good:latest", "--max-tokens", "2", "What is 12*7?", env=env)
    assert_clean(answer, answer.returncode)
    assert answer.returncode in (0, 3) and not warnings_of(answer)  # ran (3: two tokens leave no room to answer)

    meant = run_ponder("ask", "--model", "layers-string:latest", "What is 12*7?", env=env)
    assert_clean(meant, 1, "no local model layers-string:latest: Ollama has none of that name")  # the warnings: why
    assert "layers are not a list" in skipped(warnings_of(meant), odd["layers-string"])
    for command in ("info", "rm"):
        result = run_ponder("models", command, "layers-string:latest", env=env)
        assert_clean(result, 2, "no local model 'layers-string:latest'")
        assert "layers are not a list" in skipped(warnings_of(result), odd["layers-string"])


def test_odd_lmstudio_entries_are_skipped_with_a_warning(env, tmp_path, smollm2, tiny_r1_random_mlx):
    models = tmp_path / "home" / ".lmstudio" / "models"
    repo = models / "someone" / "repo"
    repo.mkdir(parents=True)
    os.symlink(smollm2, repo / "SmolLM2-Q4_1.gguf")
    odd = {name: repo / name for name in ("dangling.gguf", "loop.gguf", "folder.gguf", "fifo.gguf")}
    os.symlink(tmp_path / "nowhere.gguf", odd["dangling.gguf"])
    os.symlink(odd["loop.gguf"], odd["loop.gguf"])
    odd["folder.gguf"].mkdir()
    os.mkfifo(odd["fifo.gguf"])
    os.symlink(tmp_path / "gone", models / "gone-publisher")  # a publisher folder that leads nowhere
    odd["gone-publisher"] = models / "gone-publisher"
    os.symlink(models / "loop-publisher", models / "loop-publisher")
    odd["loop-publisher"] = models / "loop-publisher"
    mlx_list = models / "someone" / "mlx-list"
    shutil.copytree(tiny_r1_random_mlx, mlx_list, symlinks=True)
    (mlx_list / "config.json").write_text("[1, 2]")
    odd["mlx-list"] = mlx_list / "config.json"
    mlx_dangling = models / "someone" / "mlx-dangling"
    mlx_dangling.mkdir()
    shutil.copyfile(Path(tiny_r1_random_mlx) / "config.json", mlx_dangling / "config.json")
    os.symlink(tmp_path / "nowhere.safetensors", mlx_dangling / "model.safetensors")
    odd["mlx-dangling"] = mlx_dangling
    os.symlink(tiny_r1_random_mlx, models / "someone" / "tiny-mlx")

    found, warnings = listed(env)
    assert {Path(m["path"]).name for m in found.values()} == {"SmolLM2-Q4_1.gguf", "tiny-mlx"}
    assert len(warnings) == len(odd)
    reasons = {name: skipped(warnings, path) for name, path in odd.items()}
    assert "a broken link" in reasons["dangling.gguf"] and "in a loop" in reasons["loop.gguf"]
    assert "a directory" in reasons["folder.gguf"] and "not a regular file" in reasons["fifo.gguf"]
    assert "a broken link" in reasons["gone-publisher"] and "in a loop" in reasons["loop-publisher"]
    assert "a JSON list" in reasons["mlx-list"] and "model.safetensors is a broken link" in reasons["mlx-dangling"]
    assert_clean(run_ponder("doctor", env=env, timeout=60), 0)


def test_odd_hub_cache_repos_are_skipped_alone(env, tmp_path, tiny_r1_random, tiny_r1_random_mlx):
    hub = tmp_path / "hub"
    hub_repo(hub, "someone/Good-GGUF", {"Good-F16.gguf": tiny_r1_random})
    dangling = hub_repo(hub, "someone/Dangling-GGUF", {"A-F16.gguf": tiny_r1_random})
    os.symlink("../../blobs/" + "0" * 64, dangling / "B-F16.gguf")  # a blob deleted by hand
    bad_ref = hub_repo(hub, "someone/BadRef-GGUF", {"A-F16.gguf": tiny_r1_random}).parents[1]
    (bad_ref / "refs" / "main").write_bytes(b"\xff\xfe")
    lost = hub / "models--someone--LostSnapshot-GGUF"
    (lost / "snapshots").mkdir(parents=True)
    os.symlink(tmp_path / "nowhere", lost / "snapshots" / ("1" * 40))  # a snapshot folder that leads nowhere
    fifo = hub_repo(hub, "someone/Fifo-GGUF", {}) / "f.gguf"
    os.mkfifo(fifo)
    files = {p.name: p for p in Path(tiny_r1_random_mlx).iterdir() if p.is_file()}
    (tmp_path / "list.json").write_text("[1]")
    mlx_list = hub_repo(hub, "someone/MlxList", {**files, "config.json": tmp_path / "list.json"})
    (hub / "models--someone--Started" / "blobs").mkdir(parents=True)  # a pull that has not finished a file yet

    found, warnings = listed(env)
    assert set(found) == {"someone/Good-GGUF/Good-F16.gguf"}
    assert len(warnings) == 5, warnings
    assert "Blob missing" in skipped(warnings, dangling.parents[1])
    assert "utf-8" in skipped(warnings, bad_ref).lower()
    assert "No such file or directory" in skipped(warnings, lost)
    assert "not a regular file" in skipped(warnings, fifo)
    assert "a JSON list" in skipped(warnings, mlx_list / "config.json")
    answer = run_ponder("ask", "--model", "someone/Good-GGUF/Good-F16.gguf", "--max-tokens", "2", "hi", env=env)
    assert_clean(answer, answer.returncode)
    assert answer.returncode in (0, 3)

    for odd_cache in (tmp_path / "a-file", tmp_path / "a-loop"):
        if odd_cache.name == "a-file":
            odd_cache.write_text("not a folder")
        else:
            os.symlink(odd_cache, odd_cache)
        found, warnings = listed({**env, "HF_HUB_CACHE": str(odd_cache)})
        assert found == {} and len(warnings) == 1 and str(odd_cache) in warnings[0]


def run_without_privilege(*args: str, env: dict) -> subprocess.CompletedProcess:
    """`ponder ARGS` as a user that permissions apply to: as root, without the capabilities that
    let root read anything (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permissions cannot be denied")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    return subprocess.run([*prefix, sys.executable, "-m", "ponder", *args], env=env, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=60)


def test_unreadable_folders_are_skipped_with_a_warning(env, tmp_path, tiny_r1_random):
    hub = tmp_path / "hub"
    hub_repo(hub, "someone/Good-GGUF", {"Good-F16.gguf": tiny_r1_random})
    locked_repo = hub_repo(hub, "someone/Locked-GGUF", {"A-F16.gguf": tiny_r1_random}).parent
    publisher = tmp_path / "home" / ".lmstudio" / "models" / "locked"
    (publisher / "repo").mkdir(parents=True)
    ollama_model = manifest(tmp_path / "ollama", "locked", {"layers": []}).parent
    locked = [locked_repo, publisher, ollama_model]
    for folder in locked:
        folder.chmod(0)
    try:
        result = run_without_privilege("models", "--json", env=env)
        doctor = run_without_privilege("doctor", env=env)
    finally:
        for folder in locked:
            folder.chmod(0o755)
    assert_clean(result, 0)
    assert set(m["name"] for m in json.loads(result.stdout)) == {"someone/Good-GGUF/Good-F16.gguf"}
    warnings = warnings_of(result)
    assert len(warnings) == 3 and all("Permission denied" in w for w in warnings), warnings
    assert skipped(warnings, locked_repo.parent) and skipped(warnings, publisher) and skipped(warnings, ollama_model)
    assert_clean(doctor, 0)


def test_models_info_on_odd_paths_is_one_line(env, tmp_path, tiny_r1_random_mlx):
    mlx = tmp_path / "mlx"
    shutil.copytree(tiny_r1_random_mlx, mlx)
    (mlx / "config.json").write_text('["not", "an", "object"]')
    fifo_config = tmp_path / "fifo-config"
    shutil.copytree(tiny_r1_random_mlx, fifo_config)
    (fifo_config / "config.json").unlink()
    os.mkfifo(fifo_config / "config.json")
    os.symlink(tmp_path / "nowhere.gguf", tmp_path / "dangling.gguf")
    (tmp_path / "folder.gguf").mkdir()
    os.mkfifo(tmp_path / "fifo.gguf")
    cases = {
        mlx: "a JSON list, not an object",
        fifo_config: "not a regular file",  # never opened for reading: that would block
        tmp_path / "dangling.gguf": "is a broken link",
        tmp_path / "folder.gguf": "is not a model directory: it has no config.json",
        tmp_path / "fifo.gguf": "is not a regular file",
    }
    for path, message in cases.items():
        result = run_ponder("models", "info", str(path), env=env, timeout=30)
        err = assert_clean(result, 1, message)
        assert len(err.splitlines()) == 1, err
    for command in ("info", "rm"):  # "" was the current directory
        assert_clean(run_ponder("models", command, "", env=env), 2, "the model name is empty")


def test_a_hub_cache_entry_that_cannot_be_read_is_one_line(env, tmp_path):
    repo = tmp_path / "hub" / "models--bartowski--DeepSeek-R1-Distill-Qwen-7B-GGUF"  # the default model's
    (repo / "refs").mkdir(parents=True)
    (repo / "snapshots").mkdir()
    (repo / "refs" / "main").write_bytes(b"\xff\xfe")
    for args in (("ask", "hi"), ("pull", "r1-7b")):
        result = run_ponder(*args, env={**env, "HF_HUB_OFFLINE": "1"})
        assert_clean(result, 1, "the Hugging Face cache's entry for bartowski/DeepSeek-R1-Distill-Qwen-7B-GGUF cannot be"
                                " read", f"move {repo} aside")


@pytest.fixture
def immutable(tmp_path):
    """chattr +i on paths, undone after the test (an immutable file cannot be removed, even by root)."""
    if not shutil.which("chattr"):
        pytest.skip("no chattr")
    made = []

    def make(path: Path) -> None:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not permitted here")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


def test_models_rm_that_cannot_remove_says_so(env, tmp_path, tiny_r1_random, immutable):
    snapshot = hub_repo(tmp_path / "hub", "someone/Kept-GGUF", {"Kept-F16.gguf": tiny_r1_random})
    immutable(snapshot)  # its entries cannot be unlinked
    result = run_ponder("models", "rm", "someone/Kept-GGUF/Kept-F16.gguf", env=env)
    err = assert_clean(result, 1, "could not remove all of someone/Kept-GGUF/Kept-F16.gguf")
    assert result.stdout == b"" and len(err.splitlines()) == 2  # the error and its hint; no "removed"
    assert (snapshot / "Kept-F16.gguf").read_bytes() == Path(tiny_r1_random).read_bytes()


# --- hub references -----------------------------------------------------------------------------

ODD_REFERENCES = {
    "own//file.gguf": "the repo is empty",
    "/own/file.gguf": "looks like a path on this machine",
    "/x.gguf": "looks like a path on this machine",
    "a/b/": "the file name is empty",
    "owner/repo/../../etc/passwd.gguf": "no folders between",
    "owner/repo/sub/file.gguf": "no folders between",
    "../repo/file.gguf": "looks like a path on this machine",
    "own\\repo/file.gguf": "looks like a path on this machine",
    "own er/repo": "the owner 'own er' is not a hub name",
    "owner/re po/file.gguf": "the repo 're po' is not a hub name",
    "owner/repo.git": "is not a hub name",
    "a--b/repo": "is not a hub name",
    "ünï/cöde": "is not a hub name",
    "o" * 200 + "/repo": "is not a hub name",
    "owner/repo/" + "é" * 200 + ".gguf": "longer than 255 bytes",
    "owner/repo/x\x1b[2Jy.gguf": "cannot be printed",
    "owner/repo/notes.txt": "is not a .gguf file",
    "owner/repo/.gguf": "is not a .gguf file with a name",
}


@pytest.mark.parametrize("offline", [False, True])
def test_odd_hub_references_are_usage_errors_before_any_network(tmp_path, offline):
    hub = LocalHub()
    try:
        env = ponder_env(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1" if offline else "0")
        for reference, reason in ODD_REFERENCES.items():
            result = run_ponder("pull", reference, env=env)
            err = assert_clean(result, 2, "is not a hub reference", reason)
            assert "\x1b" not in err and len(err.splitlines()) == 2, err  # the error and its hint
        assert hub.requests == []
    finally:
        hub.close()


# --- --threads and --ctx --------------------------------------------------------------------------


def test_threads_beyond_llama_cpps_limit_is_a_usage_error(tiny_r1_random):
    result = run_ponder("ask", "--model", tiny_r1_random, "--threads", "100000", "hi")  # a segfault (139) before
    assert_clean(result, 2, "--threads", "512")
    for bad in ("0", "-4", "many"):
        assert_clean(run_ponder("ask", "--model", tiny_r1_random, "--threads", bad, "hi"), 2, "--threads")
    most = run_ponder("ask", "--model", tiny_r1_random, "--threads", "512", "--max-tokens", "2", "hi")
    assert_clean(most, most.returncode)
    assert most.returncode in (0, 3)  # ran (3: two tokens leave no room to answer)


def test_a_ctx_beyond_what_a_cache_can_hold_is_a_usage_error(tiny_r1_random):
    # llama.cpp keeps the size in a uint32: 2**32 ran with the model's own context, 10**23 hung in llama.cpp
    for ctx in (2**32, 2**40, 10**23, 2**31):
        result = run_ponder("ask", "--model", tiny_r1_random, "--ctx", str(ctx), "hi", timeout=60)
        assert_clean(result, 2, f"--ctx {ctx} is beyond what a model's cache can hold")
    for ctx in ("0", "-1", "lots"):
        assert_clean(run_ponder("ask", "--model", tiny_r1_random, "--ctx", ctx, "hi"), 2, "--ctx")


def test_a_ctx_needing_many_times_the_machines_memory_is_refused(tiny_r1_random, monkeypatch):
    from ponder import machine
    from ponder.backends import LoadOptions
    from ponder.errors import UsageError
    from ponder.fitting import fit_context

    monkeypatch.setattr(machine, "ram", lambda: machine.Memory(2**30, 2**30))  # a 1 GiB machine
    monkeypatch.setattr(machine, "nvidia_gpus", lambda: [])
    monkeypatch.delenv("PONDER_MEMORY_GIB", raising=False)
    with pytest.raises(UsageError, match="far beyond this machine's 1.0 GiB of memory"):
        fit_context(tiny_r1_random, "llama.cpp", LoadOptions(context=10**7))  # ~2.4 GiB of cache
    warned = fit_context(tiny_r1_random, "llama.cpp", LoadOptions(context=2 * 10**6))  # a little more than there is
    assert warned.note.startswith("ponder: warning: this needs about")


# --- odd model files -----------------------------------------------------------------------------


def gguf_start(kv_count: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, kv_count)


def key(name: str, kind: int) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode() + struct.pack("<I", kind)


def test_a_lying_string_length_is_not_read(tmp_path):
    path = tmp_path / "big-string.gguf"
    with open(path, "wb") as f:
        f.write(gguf_start(1) + key("general.name", 8) + struct.pack("<Q", 200 * 2**20))
        f.truncate(201 * 2**20)  # a sparse file: the length is within it, the bytes are zeros
    tracemalloc.start()
    try:
        with pytest.raises(NotGguf, match="corrupt"):
            read_metadata(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_lying_counts_are_refused_at_once(tmp_path):
    sparse = tmp_path / "counts.gguf"
    with open(sparse, "wb") as f:  # zeros read as empty keys of one byte each, for ever
        f.write(gguf_start(2**40))
        f.truncate(100 * 2**20)
    nested = tmp_path / "nested.gguf"  # arrays of arrays of arrays…: a recursion without end
    nested.write_bytes(gguf_start(1) + key("a", 9) + struct.pack("<IQ", 9, 1) * 100_000)
    strings = tmp_path / "strings.gguf"  # a vocabulary of 2**24+1 empty strings, read one by one
    with open(strings, "wb") as f:
        f.write(gguf_start(1) + key("tokenizer.ggml.tokens", 9) + struct.pack("<IQ", 8, 2**24 + 1))
        f.truncate(8 * (2**24 + 2) + 100)
    for path in (sparse, nested, strings):
        started = time.monotonic()
        with pytest.raises(NotGguf):
            read_metadata(path)
        assert time.monotonic() - started < 10, path  # the base walked for minutes


def test_odd_model_files_are_one_line_errors(tmp_path, tiny_r1_random, tiny_r1_random_mlx):
    empty = tmp_path / "empty.gguf"
    empty.touch()
    folder = tmp_path / "folder.gguf"
    folder.mkdir()
    data = Path(tiny_r1_random).read_bytes()
    lying = tmp_path / "lying.gguf"  # the real model, its tensor and key counts made absurd
    lying.write_bytes(data[:8] + struct.pack("<QQ", 2**62, 2**62) + data[24:])
    mlx_list = tmp_path / "mlx-list"
    shutil.copytree(tiny_r1_random_mlx, mlx_list)
    (mlx_list / "config.json").write_text("[]")
    mlx_none = tmp_path / "mlx-none"
    shutil.copytree(tiny_r1_random_mlx, mlx_none)
    (mlx_none / "config.json").unlink()
    cases = [
        ((empty,), "is empty (0 bytes)"),
        ((folder,), "is a directory, not a GGUF file"),
        ((lying,), "could not load"),
        ((mlx_list,), "config.json is a JSON list, not an object"),
        ((mlx_list, "--backend", "mlx"), "config.json is a JSON list, not an object"),
        ((mlx_none,), "is not a model directory: it has no config.json"),
    ]
    for (model, *flags), message in cases:
        result = run_ponder("ask", "--model", str(model), *flags, "hi", timeout=60)
        err = assert_clean(result, 1, message)
        assert len(err.splitlines()) <= 2, err  # the error and its hint


def test_an_mlx_config_json_that_is_a_fifo_is_never_opened(tmp_path, tiny_r1_random_mlx):
    model = tmp_path / "mlx-fifo"
    shutil.copytree(tiny_r1_random_mlx, model)
    (model / "config.json").unlink()
    os.mkfifo(model / "config.json")
    result = run_ponder("ask", "--model", str(model), "--backend", "mlx", "hi", timeout=30)  # hung before
    assert_clean(result, 1, "config.json is not a regular file")
