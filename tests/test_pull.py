"""`ponder pull` and first-use downloads, through the real huggingface_hub client against a local hub."""

from __future__ import annotations

import errno
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.cli import ponder_env, run_ponder
from tests.support.hub import LocalHub

REPO = "someone/Tiny-R1-GGUF"
FILE = "Tiny-R1-F16.gguf"
TOKEN = "hf_secret_token_never_printed"


@pytest.fixture
def hub(tiny_r1):
    server = LocalHub()
    server.add(REPO, FILE, Path(tiny_r1))
    yield server
    server.close()


@pytest.fixture
def env(hub, tmp_path):
    return ponder_env(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(tmp_path / "hub"), HF_TOKEN=TOKEN,
                      HF_HUB_DISABLE_PROGRESS_BARS="1", PONDER_CONFIG=str(tmp_path / "config.toml"))


def pull(env, name=f"{REPO}/{FILE}"):
    result = run_ponder("pull", name, env=env)
    assert TOKEN.encode() not in result.stdout + result.stderr
    return result


def test_full_download_lands_in_the_hub_cache_and_runs(env, hub, tiny_r1, tmp_path):
    result = pull(env)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.decode().strip())
    assert path.read_bytes() == Path(tiny_r1).read_bytes()
    assert tmp_path / "hub" in path.parents and "models--someone--Tiny-R1-GGUF" in str(path)
    assert any(h.get("authorization") == f"Bearer {TOKEN}" for _, _, h in hub.requests)  # HF_TOKEN honoured
    answer = run_ponder("ask", "--model", str(path), "What is 12*7?", env=env)
    assert answer.stdout.decode() == "12 × 7 = 84, so the answer is \\boxed{84}.\n"
    listed = run_ponder("models", env=env).stdout.decode()
    assert f"{REPO}/{FILE}" in listed


def test_interrupted_download_resumes(env, hub, tiny_r1):
    size = Path(tiny_r1).stat().st_size
    hub.drop_once_at = size // 2  # the connection drops halfway through
    result = pull(env)
    assert result.returncode == 0, result.stderr
    ranges = hub.ranges()
    assert ranges[0] == "" and any(r.startswith("bytes=") and int(r[6:-1]) > 0 for r in ranges[1:])  # continued
    assert len(ranges) == 2  # one resumed request, not a restart from byte 0
    assert Path(result.stdout.decode().strip()).read_bytes() == Path(tiny_r1).read_bytes()


def test_a_failed_pull_is_continued_by_the_next(env, hub, tiny_r1, tmp_path):
    size = Path(tiny_r1).stat().st_size
    hub.drop_at = size // 3  # the network keeps failing a third of the way in
    first = pull(env)
    assert first.returncode == 1 and b"cannot download" in first.stderr and b"Traceback" not in first.stderr
    partial = list((tmp_path / "hub").rglob("*.partial"))
    kept = partial[0].stat().st_size if len(partial) == 1 else 0
    assert 0 < kept <= size // 3  # what arrived (in huggingface_hub's 10 MiB chunks) is kept for the next run
    hub.drop_at = None
    hub.requests.clear()
    second = pull(env)
    assert second.returncode == 0, second.stderr
    assert hub.ranges() == [f"bytes={kept}-"]  # only the missing part was fetched
    assert Path(second.stdout.decode().strip()).read_bytes() == Path(tiny_r1).read_bytes()
    assert not list((tmp_path / "hub").rglob("*.partial"))


def test_checksum_mismatch_is_refused_and_removed(env, hub, tmp_path):
    hub.etags[f"{REPO}/{FILE}"] = "0" * 64  # the hub says one sha256, the bytes have another
    result = pull(env)
    assert result.returncode == 1
    assert b"does not match its sha256" in result.stderr and b"was removed" in result.stderr
    assert not [p for p in (tmp_path / "hub").rglob("*.gguf")]
    assert not [p for p in (tmp_path / "hub").rglob("blobs/*") if p.stat().st_size > 1000]


def test_the_token_stays_with_the_hub_when_it_redirects_to_a_cdn(env, hub, tiny_r1):
    cdn = LocalHub(host="localhost")  # another host than the hub's 127.0.0.1, as a CDN is
    cdn.files = hub.files
    hub.redirect_to = cdn
    try:
        result = pull(env)
    finally:
        cdn.close()
    assert result.returncode == 0, result.stderr  # downloaded, and verified against the hub's sha256
    assert Path(result.stdout.decode().strip()).read_bytes() == Path(tiny_r1).read_bytes()
    assert cdn.ranges() == [""]  # the bytes came from the CDN
    assert not [h for _, _, h in cdn.requests if "authorization" in h]
    assert any(h.get("authorization") == f"Bearer {TOKEN}" for _, _, h in hub.requests)


def wait_until(condition, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_concurrent_pulls_of_one_file_fetch_it_once(env, hub, tiny_r1, tmp_path):
    hub.hold_at = Path(tiny_r1).stat().st_size // 2  # the first download waits halfway, while the second pull starts
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(pull, env)
        assert wait_until(lambda: len(hub.ranges()) == 1)
        second = pool.submit(pull, env)
        assert wait_until(lambda: [m for m, _, _ in hub.requests].count("HEAD") == 2)  # the second asked for the file
        wait_until(lambda: len(hub.ranges()) > 1, timeout=2)  # and would be fetching it now, had it not waited
        hub.release.set()
        results = [first.result(), second.result()]
    for result in results:
        assert result.returncode == 0, result.stderr
        assert Path(result.stdout.decode().strip()).read_bytes() == Path(tiny_r1).read_bytes()
    assert hub.ranges() == [""]  # the file was fetched once, by one pull
    assert not list((tmp_path / "hub").rglob("*.partial"))


@pytest.fixture
def pull_fails_with(monkeypatch):
    """Makes the download itself raise `exc`; returns what `ponder.download.pull` then raises."""
    from huggingface_hub import constants

    from ponder import download
    from ponder.catalogue import lookup

    def pull_failing_with(exc: BaseException) -> BaseException:
        def fail(artifact):
            raise exc

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(download, "_pull_file", fail)
        with pytest.raises(BaseException) as caught:
            download.pull(lookup(f"{REPO}/{FILE}"))
        return caught.value

    return pull_failing_with


def test_a_bug_is_not_reported_as_a_network_problem(pull_fails_with):
    bug = TypeError("unsupported operand type(s)")
    assert pull_fails_with(bug) is bug  # the CLI reports it as an unexpected error (the traceback under --debug)


def test_a_full_disk_is_reported_as_a_disk_problem(pull_fails_with):
    from ponder.errors import ModelError

    error = pull_fails_with(OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(error, ModelError)
    assert error.message.startswith(f"cannot write {REPO}/{FILE} into ") and "No space left on device" in error.message
    assert "disk" in error.hint and "network" not in error.hint


def test_offline_fails_fast_and_clearly(env):
    result = run_ponder("pull", f"{REPO}/{FILE}", env={**env, "HF_HUB_OFFLINE": "1"}, timeout=20)
    assert result.returncode == 1 and b"HF_HUB_OFFLINE is set" in result.stderr
    unreachable = run_ponder("pull", f"{REPO}/{FILE}", env={**env, "HF_ENDPOINT": "http://127.0.0.1:9"}, timeout=30)
    assert unreachable.returncode == 1 and b"cannot connect" in unreachable.stderr
    assert b"Traceback" not in unreachable.stderr


def test_missing_file_and_unknown_alias(env):
    missing = pull(env, f"{REPO}/nothing.gguf")
    assert missing.returncode == 1 and b"cannot download someone/Tiny-R1-GGUF/nothing.gguf" in missing.stderr
    unknown = run_ponder("pull", "r2-d2", env=env)
    assert unknown.returncode == 2 and b"unknown model 'r2-d2'" in unknown.stderr


def test_first_use_without_a_model_in_a_pipe_says_how(env):
    result = run_ponder("ask", "What is 12*7?", env=env)
    assert result.returncode == 1
    assert b"no model given, and the default model r1-7b is not downloaded" in result.stderr
    assert b"hint: ponder pull r1-7b" in result.stderr


def test_first_use_on_a_terminal_offers_the_download(hub, env, tiny_r1):
    from ponder.catalogue import CATALOGUE
    from tests.support.cli import TmuxSession

    default = CATALOGUE["r1-7b"]
    hub.add(default.repo, default.filename, Path(tiny_r1))  # the local hub serves the tiny model under its name
    session = TmuxSession("ask", "What is 12*7?", env={**env, "TERM": "xterm-256color"})
    try:
        session.wait_for(r"No model given\. Download r1-7b \(bartowski/DeepSeek-R1-Distill-Qwen-7B-GGUF/"
                         r"DeepSeek-R1-Distill-Qwen-7B-Q4_K_M\.gguf, 4\.68 GB\) into the Hugging Face cache\? \[y/N\]$")
        session.line("y")
        session.wait_for(r"12 × 7 = 84, so the answer is 84\.[\s\S]*EXIT=0", timeout=90)
        again = TmuxSession("ask", "What is 2+2?", env={**env, "TERM": "xterm-256color"})  # cached now: no question
        try:
            screen = again.wait_for(r"EXIT=0", timeout=90)
            assert "Download" not in screen and "The answer is 4." in screen
        finally:
            again.close()
    finally:
        session.close()
