"""The prompt cache on disk (ponder.prompt_cache, llama.cpp's StateOnDisk, `--no-prompt-cache`, `ponder cache`):
a reply from a loaded entry is the reply without one, an entry loads only for the very model and settings
that made it, a damaged entry is removed, writes are whole, the cap holds. Real models throughout."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ponder import prompt_cache
from ponder.prompt_cache import MIN_TOKENS, PromptCache, model_identity
from tests.support.cli import ponder_env, run_ponder

SENTENCE = "The harbour committee met on a grey Tuesday to review the ferry timetable and the fishermen's letter. "
DOCUMENT = "".join(f"{n}. {SENTENCE}" for n in range(1, 16))  # about 350 tokens: past MIN_TOKENS on both models
QUESTION = "Which day did the committee meet?"


def entries(root: Path) -> list[Path]:
    return sorted(root.glob(f"*/*{prompt_cache.SUFFIX}"))


# --- the store alone ----------------------------------------------------------------------------


def named(identity: str) -> str:
    """An identity as model_identity makes them (40 hex digits: the only folders ponder reads or removes)."""
    return hashlib.sha256(identity.encode()).hexdigest()[:40]


def store(root: Path, identity: str = "model-a", **kwargs) -> PromptCache:
    return PromptCache(named(identity), root=root, **kwargs)


def ids(n: int, start: int = 1000) -> list[int]:
    return list(range(start, start + n))


def test_an_entry_is_found_by_its_longest_shared_prefix_and_loads_whole(tmp_path):
    cache = store(tmp_path)
    assert cache.save(ids(MIN_TOKENS - 1), b"short") is None  # a short prompt is not stored
    cache.save(ids(MIN_TOKENS + 10), b"state of the prompt")
    hit = cache.longest(ids(MIN_TOKENS + 5) + [7, 7])
    assert (hit.shared, len(hit.tokens)) == (MIN_TOKENS + 5, MIN_TOKENS + 10)
    assert cache.load(hit) == b"state of the prompt"
    assert cache.longest(ids(MIN_TOKENS - 1) + [7] * 50) is None  # shares too little to be worth a load
    assert store(tmp_path, "model-b").longest(ids(MIN_TOKENS + 10)) is None  # another model's entries are not seen


def test_a_longer_entry_replaces_the_one_it_extends(tmp_path):
    cache = store(tmp_path)
    cache.save(ids(MIN_TOKENS), b"turn one")
    cache.save(ids(MIN_TOKENS * 2), b"turns one and two")
    assert len(entries(tmp_path)) == 1
    assert cache.load(cache.longest(ids(MIN_TOKENS))) == b"turns one and two"


def flip_payload_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # in the state, past the header and the token ids
    path.write_bytes(bytes(data))


def cut(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 100)


def garble_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[20:30] = b"\xff" * 10  # inside the JSON header: no longer UTF-8 JSON
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [flip_payload_byte, cut, garble_header])
def test_a_damaged_entry_is_removed_and_not_loaded(tmp_path, damage):
    cache = store(tmp_path)
    path = cache.save(ids(MIN_TOKENS), os.urandom(4096))
    damage(path)
    hit = cache.longest(ids(MIN_TOKENS))
    assert hit is None or cache.load(hit) is None
    assert not path.exists()


def _save_at_once(root: str, barrier, seed: int) -> None:
    """One of several processes saving the same tokens, each its own (big) state."""
    payload = bytes([seed]) * (48 << 20)
    barrier.wait()
    PromptCache(named("model-a"), root=Path(root)).save(ids(MIN_TOKENS * 4), payload)


def test_two_processes_saving_the_same_entry_at_once_leave_one_valid_entry(tmp_path):
    context = multiprocessing.get_context("spawn")
    for _ in range(3):
        barrier = context.Barrier(2)
        workers = [context.Process(target=_save_at_once, args=(str(tmp_path), barrier, seed)) for seed in (1, 2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
            assert worker.exitcode == 0
        assert len(entries(tmp_path)) == 1 and not list(tmp_path.glob("*/.writing-*"))
        cache = store(tmp_path)
        state = cache.load(cache.longest(ids(MIN_TOKENS * 4)))
        assert state in (bytes([1]) * (48 << 20), bytes([2]) * (48 << 20))  # one writer's, whole
        prompt_cache.clear(tmp_path)


def test_the_process_ends_only_once_its_write_is_whole(tmp_path):
    """The model's thread, which starts the write, is a daemon; the writer must not be (a thread is a daemon
    if the thread that starts it is, unless told), or the process's end would cut the write short."""
    script = f"""
import sys, threading
from pathlib import Path
from ponder.prompt_cache import PromptCache
cache = PromptCache("{named('model-a')}", root=Path(sys.argv[1]))
model_thread = threading.Thread(target=lambda: cache.save_later(list(range({MIN_TOKENS})), bytes(200 << 20)),
                                daemon=True)
model_thread.start()
model_thread.join()
"""
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=120)
    assert len(entries(tmp_path)) == 1 and not list(tmp_path.glob("*/.writing-*"))


def test_the_cap_evicts_the_least_recently_used_entries(tmp_path):
    payload = os.urandom(10_000)  # an entry: about 10.4 kB
    first, second = store(tmp_path, "model-a"), store(tmp_path, "model-b")
    paths = [first.save(ids(MIN_TOKENS, 0), payload), second.save(ids(MIN_TOKENS, 5000), payload),
             first.save(ids(MIN_TOKENS, 9000), payload)]
    now = time.time()
    for age, path in zip((300, 200, 100), paths):
        os.utime(path, (now - age, now - age))
    assert first.load(first.longest(ids(MIN_TOKENS, 0))) == payload  # used: now the most recent
    capped = store(tmp_path, "model-b", limit_bytes=25_000)  # the cap is the whole cache's, every model's
    newest = capped.save(ids(MIN_TOKENS, 20000), payload)
    assert [p.exists() for p in paths] == [True, False, False] and newest.exists()
    assert prompt_cache.usage(tmp_path) == (2, sum(p.stat().st_size for p in (paths[0], newest)))


def test_a_write_that_a_killed_process_left_is_removed_after_an_hour(tmp_path):
    cache = store(tmp_path)
    cache.folder.mkdir(parents=True)
    stale, live = cache.folder / ".writing-stale", cache.folder / ".writing-live"
    stale.write_bytes(b"x" * 1000)
    live.write_bytes(b"x" * 1000)
    os.utime(stale, (time.time() - 3700, time.time() - 3700))
    cache.save(ids(MIN_TOKENS), b"state")
    assert not stale.exists() and live.exists()  # (another process may be writing that one now)


def test_clear_counts_what_it_could_not_remove(tmp_path):
    cache = store(tmp_path)
    cache.save(ids(MIN_TOKENS), b"state")
    cache.save(ids(MIN_TOKENS, 5000), b"state")
    assert prompt_cache.clear(tmp_path) == (2, 0)
    assert prompt_cache.usage(tmp_path) == (0, 0) and not list(tmp_path.iterdir())
    assert prompt_cache.clear(tmp_path / "never made") == (0, 0)


def test_a_cache_that_cannot_be_written_only_skips_saving(tmp_path):
    blocked = tmp_path / "a file"
    blocked.write_text("where the cache folder would be")
    cache = store(blocked / "prompt-cache")
    assert cache.save(ids(MIN_TOKENS), b"state") is None
    assert cache.longest(ids(MIN_TOKENS)) is None


def test_the_identity_tells_apart_a_file_of_the_same_size_and_time(tmp_path, tiny_r1):
    model = tmp_path / "model.gguf"
    shutil.copy(tiny_r1, model)
    before = model_identity(str(model), "llama.cpp", {"context": 4096})
    assert model_identity(str(model), "llama.cpp", {"context": 4096}) == before
    assert model_identity(str(model), "llama.cpp", {"context": 2048}) != before
    assert model_identity(str(model), "mlx", {"context": 4096}) != before
    change_weights_keeping_size_and_time(model)
    assert model_identity(str(model), "llama.cpp", {"context": 4096}) != before


def change_weights_keeping_size_and_time(path: Path) -> None:
    """Another model in all but name, size and time: its last weights changed (the header, first, is the same)."""
    stat = path.stat()
    with open(path, "r+b") as file:
        file.seek(stat.st_size - 4096)
        tail = bytearray(file.read())
        file.seek(stat.st_size - 4096)
        file.write(bytes(b ^ 0x01 for b in tail))  # the lowest bit of each byte: a model that still loads
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


# --- llama.cpp: what loads, and what it gives -----------------------------------------------------


def generate(path: str, prompt: str, context: int = 2048, cache: bool = True) -> tuple[list[int], int, int]:
    """A greedy reply's token ids, and the prompt's tokens: processed, in all (a model loaded afresh, as a
    new process would, its cache on disk only)."""
    from ponder.backends import LoadOptions, get_backend
    from ponder.events import Finished, GenerationParams, TextDelta

    model = get_backend("llama.cpp").load(path, LoadOptions(context=context,
                                                            prompt_cache_bytes=(1 << 30) if cache else None))
    try:
        events = list(model.stream(prompt, GenerationParams(temperature=0, max_tokens=16)))
    finally:
        model.close()  # (waits for the write)
    assert isinstance(events[-1], Finished) and events[-1].finish_reason in ("stop", "length")
    stats = events[-1].stats
    return [i for e in events if isinstance(e, TextDelta) for i in e.ids], stats.prefilled_tokens, stats.prompt_tokens


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "prompt-cache"
    monkeypatch.setenv(prompt_cache.CACHE_DIR_ENV, str(root))
    return root


@pytest.mark.parametrize("model", ["smollm2", "tiny_r1"])
def test_a_model_loaded_afresh_takes_the_state_from_disk_and_replies_the_same(request, cache_root, model):
    path = request.getfixturevalue(model)
    prompt = DOCUMENT + QUESTION
    first, processed, total = generate(path, prompt)
    assert processed == total >= MIN_TOKENS and len(entries(cache_root)) == 1
    again, processed, _ = generate(path, prompt)
    assert processed == 1 and again == first  # the last token is processed for its logits
    uncached, processed, _ = generate(path, prompt, cache=False)
    assert processed == total and uncached == first
    longer, processed, _ = generate(path, prompt + " And which month?")
    assert processed < 12  # the stored prefix, then the new words
    assert generate(path, prompt + " And which month?", cache=False)[0] == longer


@pytest.mark.parametrize("change", ["another GGUF under the same name", "same size and time, other weights",
                                    "another context", "another engine version"])
def test_an_entry_never_loads_for_another_model_or_setting(cache_root, tmp_path, tiny_r1, tiny_r1_random,
                                                           monkeypatch, change):
    path = tmp_path / "model.gguf"
    shutil.copy(tiny_r1, path)
    prompt = DOCUMENT + QUESTION
    _, processed, total = generate(str(path), prompt)
    assert processed == total
    assert generate(str(path), prompt)[1] == 1  # unchanged: loads (so that what follows can fail)
    context = 2048
    if change == "another GGUF under the same name":
        shutil.copy(tiny_r1_random, path)  # the same tokenizer: the same token ids
    elif change == "same size and time, other weights":
        change_weights_keeping_size_and_time(path)
    elif change == "another context":
        context = 4096
    else:
        import llama_cpp

        monkeypatch.setattr(llama_cpp, "__version__", llama_cpp.__version__ + ".1")
    assert generate(str(path), prompt, context)[1] == total


@pytest.mark.parametrize("damage", [flip_payload_byte, cut])
def test_a_damaged_entry_is_processed_again_and_replaced(cache_root, smollm2, damage):
    prompt = DOCUMENT + QUESTION
    first, _, total = generate(smollm2, prompt)
    [entry] = entries(cache_root)
    damage(entry)
    again, processed, _ = generate(smollm2, prompt)
    assert processed == total and again == first
    assert generate(smollm2, prompt)[1] == 1  # saved again, whole


# --- the command line -------------------------------------------------------------------------------


def ask(model: str, env: dict, *flags: str) -> tuple[str, str]:
    """A greedy reply to DOCUMENT, piped, and QUESTION: its reasoning and answer."""
    result = run_ponder("ask", "--model", model, "--temperature", "0", "--max-tokens", "24", "--json", *flags,
                        QUESTION, stdin=DOCUMENT.encode(), env=env, timeout=300)
    assert result.returncode == 0 and b"error" not in result.stderr, result.stderr
    reply = json.loads(result.stdout)
    return reply["reasoning"], reply["answer"]


def mtimes(root: Path) -> dict:
    return {path: path.stat().st_mtime_ns for path in entries(root)}


def age(root: Path) -> None:
    for path in entries(root):
        os.utime(path, (time.time() - 1000, time.time() - 1000))


@pytest.mark.parametrize("model", ["smollm2", "tiny_r1"])
def test_asking_twice_in_two_processes_loads_the_entry_and_replies_the_same(request, tmp_path, model):
    path, root = request.getfixturevalue(model), tmp_path / "cache"
    env = ponder_env(PONDER_CACHE_DIR=str(root))
    first = ask(path, env)
    assert len(entries(root)) == 1
    age(root)
    aged = mtimes(root)
    assert ask(path, env) == first
    assert mtimes(root).keys() == aged.keys() and all(mtimes(root)[p] > aged[p] for p in aged)  # loaded: used now
    age(root)
    aged = mtimes(root)
    assert ask(path, env, "--no-prompt-cache") == first
    assert mtimes(root) == aged  # neither loaded nor saved


def test_no_prompt_cache_and_a_cap_of_zero_write_nothing(tmp_path, smollm2):
    root = tmp_path / "cache"
    ask(smollm2, ponder_env(PONDER_CACHE_DIR=str(root)), "--no-prompt-cache")
    assert not root.exists()
    config = tmp_path / "config.toml"
    config.write_text("prompt_cache_gib = 0\n")
    ask(smollm2, ponder_env(PONDER_CACHE_DIR=str(root), PONDER_CONFIG=str(config)))
    assert not root.exists()
    shown = run_ponder("cache", env=ponder_env(PONDER_CACHE_DIR=str(root), PONDER_CONFIG=str(config)))
    assert "off" in shown.stdout.decode()


def test_cache_shows_what_it_holds_and_clear_empties_it(tmp_path, smollm2):
    root = tmp_path / "cache"
    env = ponder_env(PONDER_CACHE_DIR=str(root))
    ask(smollm2, env)
    size = sum(p.stat().st_size for p in entries(root))
    shown = run_ponder("cache", env=env)
    assert shown.returncode == 0
    assert shown.stdout.decode() == (f"prompt cache: {root}\n1 entry, {size / 2**20:.1f} MiB; cap 4 GiB"
                                     " (config prompt_cache_gib)\n")
    doctor = run_ponder("doctor", env=env)
    assert f"prompt cache: {root} · 1 entry" in doctor.stdout.decode()
    cleared = run_ponder("cache", "clear", env=env)
    assert cleared.returncode == 0 and cleared.stdout.decode().startswith("removed 1 entry")
    assert entries(root) == []
    assert run_ponder("cache", env=env).stdout.decode().splitlines()[1].startswith("0 entries, 0.0 MiB")


@pytest.mark.parametrize("blocked", ["read-only folder", "a file in the way"])
def test_an_unwritable_cache_only_skips_saving(tmp_path, smollm2, blocked):
    root = tmp_path / "cache"
    if blocked == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder anyway")
        root.mkdir()
        root.chmod(0o500)
    else:
        root.write_text("not a folder")
    try:
        expected = ask(smollm2, ponder_env(PONDER_CACHE_DIR=str(tmp_path / "elsewhere")), "--no-prompt-cache")
        assert ask(smollm2, ponder_env(PONDER_CACHE_DIR=str(root))) == expected
        assert root.is_file() or not list(root.iterdir())
    finally:
        if root.is_dir():
            root.chmod(0o700)


def chat(model: str, data: Path, root: Path, message: str, *flags: str):
    env = ponder_env(PONDER_DATA_DIR=str(data), PONDER_CACHE_DIR=str(root))
    result = run_ponder("chat", "--model", model, "--temperature", "0", "--max-tokens", "24", *flags,
                        stdin=message.encode() + b"\n", env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def test_a_resumed_chat_loads_its_state_and_replies_as_without_the_cache(tmp_path, smollm2):
    data, root = tmp_path / "data", tmp_path / "cache"
    chat(smollm2, data, root, DOCUMENT + QUESTION)
    assert len(entries(root)) == 1
    age(root)
    aged = mtimes(root)
    shutil.copytree(data, tmp_path / "data copy")
    resumed = chat(smollm2, data, root, "And which month was it?", "--continue")
    assert mtimes(root).keys() == aged.keys() and all(mtimes(root)[p] > aged[p] for p in aged)  # loaded
    without = chat(smollm2, tmp_path / "data copy", tmp_path / "no cache", "And which month was it?", "--continue",
                   "--no-prompt-cache")
    assert resumed == without and resumed.strip()
    with sqlite3.connect(data / "history.db") as db:
        assert db.execute("SELECT count(*) FROM turns").fetchone()[0] == 4

