"""The prompt cache touches only what it wrote: `ponder cache clear` and eviction leave other programs' files
alone (the cache dir may be set to a shared folder), and a folder open to others is neither read nor written."""

from __future__ import annotations

import os

from ponder.prompt_cache import MIN_TOKENS, PromptCache, clear, usage

IDENTITY = "a" * 40


def store(root, payload=b"state" * 100):
    cache = PromptCache(IDENTITY, root=root, limit_bytes=1 << 30)
    assert cache.save(list(range(MIN_TOKENS)), payload) is not None
    return cache


def test_clear_and_usage_count_and_remove_only_ponders_entries(tmp_path):
    store(tmp_path)
    other = tmp_path / "otherapp"
    other.mkdir()
    (other / "model.kv").write_bytes(b"not ponder's")
    (tmp_path / "emptyapp").mkdir()
    fake = tmp_path / ("b" * 40)
    fake.mkdir()
    (fake / ("c" * 40 + ".kv")).write_bytes(b"named like an entry, but no magic")
    assert usage(tmp_path)[0] == 1
    assert clear(tmp_path) == (1, 0)
    assert (other / "model.kv").exists() and (tmp_path / "emptyapp").is_dir() and (fake / ("c" * 40 + ".kv")).exists()
    assert not (tmp_path / IDENTITY).exists()


def test_eviction_leaves_other_files_alone(tmp_path):
    other = tmp_path / ("d" * 40)
    other.mkdir()
    foreign = other / ("e" * 40 + ".kv")
    foreign.write_bytes(b"x" * 10_000)  # large, old, and not ponder's
    os.utime(foreign, (0, 0))
    cache = PromptCache(IDENTITY, root=tmp_path, limit_bytes=5_000)
    assert cache.save(list(range(MIN_TOKENS)), b"s" * 1_000) is not None
    assert foreign.exists() and usage(tmp_path)[0] == 1


def test_a_cache_folder_open_to_others_is_neither_read_nor_written(tmp_path):
    cache = store(tmp_path)
    assert cache.longest(list(range(MIN_TOKENS + 5))) is not None
    os.chmod(tmp_path, 0o777)
    assert cache.longest(list(range(MIN_TOKENS + 5))) is None
    assert cache.save(list(range(MIN_TOKENS + 10)), b"new") is None
    os.chmod(tmp_path, 0o700)
    assert cache.longest(list(range(MIN_TOKENS + 5))) is not None


def test_a_fifo_named_like_an_entry_does_not_block_a_lookup(tmp_path):
    cache = store(tmp_path)
    os.mkfifo(tmp_path / IDENTITY / ("f" * 40 + ".kv"))
    assert cache.longest(list(range(MIN_TOKENS + 5))).shared == MIN_TOKENS
    assert usage(tmp_path)[0] == 1


def test_a_state_larger_than_the_cap_is_not_written(tmp_path):
    cache = PromptCache(IDENTITY, root=tmp_path, limit_bytes=100)
    assert cache.save(list(range(MIN_TOKENS)), b"s" * 1_000) is None
    assert usage(tmp_path) == (0, 0)
