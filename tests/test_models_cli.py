"""`ponder models`, `doctor` and `config` on this machine, with model stores laid out as
Ollama, LM Studio and the Hugging Face cache lay them out."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.support.cli import ponder_env, run_ponder


REVISION = "0123456789abcdef0123456789abcdef01234567"


def _blob_name(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def hub_repo(hub: Path, repo_id: str, files: dict, revision: str = REVISION) -> Path:
    """A model repo as huggingface_hub caches it: blobs named by content, a snapshot of links
    to them, refs/main. `files` maps each file name in the snapshot to a file to copy."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    for name, source in files.items():
        blob = repo / "blobs" / _blob_name(source)
        if not blob.exists():
            shutil.copyfile(source, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    return snapshot


@pytest.fixture
def stores(tmp_path, tiny_r1, smollm2, tiny_r1_mlx):
    """An Ollama models dir, an LM Studio folder and a hub cache, each holding real test models."""
    ollama = tmp_path / "ollama"
    digest = _blob_name(tiny_r1)
    (ollama / "blobs").mkdir(parents=True)
    os.symlink(tiny_r1, ollama / "blobs" / f"sha256-{digest}")
    manifest = {"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": 1},
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:00", "size": 1}]}
    for host, namespace, model, tag in [("registry.ollama.ai", "library", "deepseek-r1", "7b"),
                                        ("hf.co", "bartowski", "tiny-r1", "F16")]:
        target = ollama / "manifests" / host / namespace / model / tag
        target.parent.mkdir(parents=True)
        target.write_text(json.dumps(manifest))

    home = tmp_path / "home"
    lmstudio = home / ".lmstudio" / "models" / "HuggingFaceTB" / "SmolLM2-GGUF"
    lmstudio.mkdir(parents=True)
    os.symlink(smollm2, lmstudio / "SmolLM2-135M-Instruct-Q4_1.gguf")
    os.symlink(tiny_r1_mlx, home / ".lmstudio" / "models" / "HuggingFaceTB" / "tiny-mlx")

    hub = tmp_path / "hub"
    hub_repo(hub, "someone/Tiny-R1-GGUF", {"Tiny-R1-F16.gguf": tiny_r1})
    return ponder_env(OLLAMA_MODELS=str(ollama), HOME=str(home), HF_HUB_CACHE=str(hub),
                      PONDER_CONFIG=str(tmp_path / "config.toml"))


def models(env) -> dict:
    result = run_ponder("models", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return {m["name"]: m for m in json.loads(result.stdout)}


def test_models_lists_every_store(stores, tiny_r1, smollm2):
    found = models(stores)
    assert found["deepseek-r1:7b"]["source"] == "ollama"
    assert found["deepseek-r1:7b"]["quantization"] == "F16" and found["deepseek-r1:7b"]["backend"] == "llama.cpp"
    assert Path(found["deepseek-r1:7b"]["path"]).resolve() == Path(tiny_r1).resolve()
    assert "hf.co/bartowski/tiny-r1:F16" in found
    lm = [m for m in found.values() if m["source"] == "lmstudio"]
    assert {(m["backend"], m["quantization"]) for m in lm} == {("llama.cpp", "Q4_1"), ("mlx", "float32")}
    hub = found["someone/Tiny-R1-GGUF/Tiny-R1-F16.gguf"]
    assert hub["source"] == "hub" and hub["size"] == Path(tiny_r1).stat().st_size
    table = run_ponder("models", env=stores).stdout.decode()
    assert "deepseek-r1:7b" in table and "ollama" in table and "GiB" in table


def test_an_ollama_name_runs_as_a_model(stores):
    result = run_ponder("ask", "--model", "deepseek-r1:7b", "What is 12*7?", env=stores)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "12 × 7 = 84, so the answer is \\boxed{84}.\n"


def test_models_info(stores, tiny_r1_mlx):
    out = run_ponder("models", "info", "deepseek-r1:7b", env=stores).stdout.decode()
    facts = dict(line.split(None, 1) for line in out.splitlines())
    assert facts["architecture"] == "qwen2" and facts["context_length"] == "32768"
    assert facts["quantization"] == "F16" and facts["chat_template"] == "true" and facts["layers"] == "2"
    out = run_ponder("models", "info", tiny_r1_mlx, env=stores).stdout.decode()
    facts = dict(line.split(None, 1) for line in out.splitlines())
    assert facts["backend"] == "mlx" and facts["architecture"] == "qwen2" and facts["chat_template"] == "true"
    missing = run_ponder("models", "info", "nothing:here", env=stores)
    assert missing.returncode == 2 and b"no local model 'nothing:here'" in missing.stderr


def test_models_rm_removes_hub_downloads_only(stores):
    refused = run_ponder("models", "rm", "deepseek-r1:7b", env=stores)
    assert refused.returncode == 2 and b"remove it with ollama rm" in refused.stderr
    removed = run_ponder("models", "rm", "someone/Tiny-R1-GGUF/Tiny-R1-F16.gguf", env=stores)
    assert removed.returncode == 0, removed.stderr
    assert "someone/Tiny-R1-GGUF/Tiny-R1-F16.gguf" not in models(stores)
    assert "deepseek-r1:7b" in models(stores)


def test_every_listed_name_runs_with_model(stores):
    for name in models(stores):  # hub owner/repo/file.gguf, Ollama names, LM Studio paths (GGUF and MLX)
        result = run_ponder("ask", "--model", name, "--max-tokens", "2", "What is 12*7?", env=stores)
        assert result.returncode in (0, 3), (name, result.stderr)  # ran (3: two tokens left no room to answer)
    result = run_ponder("ask", "--model", "someone/Tiny-R1-GGUF/Tiny-R1-F16.gguf", "What is 12*7?", env=stores)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().endswith("12 × 7 = 84, so the answer is \\boxed{84}.\n")


def test_hub_mlx_names_run_with_model(hub_cache, tiny_r1_mlx):
    hub, env = hub_cache
    files = {p.name: p for p in Path(tiny_r1_mlx).iterdir() if p.is_file()}
    hub_repo(hub, "mlx-community/Tiny-R1", files)
    hub_repo(hub, "tiny", files)  # an id without an owner, as the hub's oldest repos have
    for name in ("mlx-community/Tiny-R1", "tiny"):
        result = run_ponder("ask", "--model", name, "--max-tokens", "2", "What is 12*7?", env=env)
        assert result.returncode in (0, 3), (name, result.stderr)  # ran (3: two tokens left no room to answer)


@pytest.fixture
def hub_cache(tmp_path):
    """An empty hub cache, and no other store; with the environment that points ponder at it."""
    hub = tmp_path / "hub"
    hub.mkdir()
    return hub, ponder_env(HF_HUB_CACHE=str(hub), HOME=str(tmp_path / "home"), OLLAMA_MODELS=str(tmp_path / "ollama"),
                           PONDER_CONFIG=str(tmp_path / "config.toml"))


def test_models_rm_never_follows_a_link_out_of_the_cache(hub_cache, tmp_path, tiny_r1):
    hub, env = hub_cache
    precious = tmp_path / "precious.gguf"
    shutil.copyfile(tiny_r1, precious)
    snapshot = hub_repo(hub, "someone/Odd-GGUF", {"Tiny-R1-F16.gguf": tiny_r1})
    os.symlink(precious, snapshot / "odd.gguf")  # a snapshot entry that leads out of the cache
    for name in ("someone/Odd-GGUF/odd.gguf", str(snapshot / "odd.gguf")):
        result = run_ponder("models", "rm", name, env=env)
        err = result.stderr.decode()
        assert result.returncode == 1 and "outside its repo's blobs/" in err and "Traceback" not in err
        assert precious.read_bytes() == Path(tiny_r1).read_bytes()
    assert set(models(env)) == {"someone/Odd-GGUF/odd.gguf", "someone/Odd-GGUF/Tiny-R1-F16.gguf"}


def test_models_rm_of_an_mlx_download_removes_it(hub_cache, tiny_r1_mlx):
    hub, env = hub_cache
    files = {p.name: p for p in Path(tiny_r1_mlx).iterdir() if p.is_file()}
    hub_repo(hub, "mlx-community/Tiny-R1", files)
    hub_repo(hub, "tiny", files)  # an id without an owner, as the hub's oldest repos have
    size = sum(p.stat().st_size for p in (hub / "models--tiny" / "blobs").iterdir())
    listed = models(env)
    assert listed["mlx-community/Tiny-R1"]["backend"] == "mlx" and listed["tiny"]["backend"] == "mlx"
    remaining = set(listed)
    for name, arg in (("mlx-community/Tiny-R1", listed["mlx-community/Tiny-R1"]["path"]), ("tiny", "tiny")):
        result = run_ponder("models", "rm", arg, env=env)  # by the path `ponder models` shows, or by name
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode() == f"removed {name} ({size / 2**20:.1f} MiB)\n"
        remaining.remove(name)
        assert set(models(env)) == remaining  # the other repo stays, though its snapshot has the same commit hash
    assert list(hub.iterdir()) == []
    missing = run_ponder("models", "rm", "nameonly", env=env)
    err = missing.stderr.decode()
    assert missing.returncode == 2 and "no local model 'nameonly'" in err and "Traceback" not in err


def test_models_rm_keeps_a_blob_another_file_links_to(hub_cache, tiny_r1):
    hub, env = hub_cache
    hub_repo(hub, "someone/Twins-GGUF", {"A.gguf": tiny_r1, "B.gguf": tiny_r1})  # one blob, two names
    first = run_ponder("models", "rm", "someone/Twins-GGUF/A.gguf", env=env)
    assert first.returncode == 0 and first.stdout.decode() == "removed someone/Twins-GGUF/A.gguf (0.0 MiB)\n"
    assert set(models(env)) == {"someone/Twins-GGUF/B.gguf"}
    answer = run_ponder("ask", "--model", "someone/Twins-GGUF/B.gguf", "What is 12*7?", env=env)
    assert answer.returncode == 0 and answer.stdout.decode().endswith("\\boxed{84}.\n"), answer.stderr
    second = run_ponder("models", "rm", "someone/Twins-GGUF/B.gguf", env=env)
    size = Path(tiny_r1).stat().st_size
    assert second.returncode == 0 and second.stdout.decode() == f"removed someone/Twins-GGUF/B.gguf ({size / 2**20:.1f} MiB)\n"
    assert list((hub / "models--someone--Twins-GGUF" / "blobs").iterdir()) == []


def test_doctor(stores):
    result = run_ponder("doctor", env=stores)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "llama.cpp (default): usable · llama-cpp-python" in out
    assert "mlx: usable · mlx" in out and "acceleration: none (CPU only)" in out
    assert "models found: 5" in out and "RAM: " in out
    assert f"config file: {stores['PONDER_CONFIG']} (none yet)" in out


def test_config_precedence_defaults_file_env_flags(stores, tiny_r1, smollm2):
    def model_used(*args, **env):
        result = run_ponder("ask", "--json", "--max-tokens", "5", *args, "What is 12*7?", env={**stores, **env})
        assert result.returncode in (0, 3), result.stderr  # 3: five tokens leave the tiny R1 no room to answer
        return json.loads(result.stdout)["model"]

    assert run_ponder("config", "set", "model", tiny_r1, env=stores).returncode == 0
    assert model_used().startswith("Tiny R1")  # the file's model
    assert model_used(PONDER_MODEL=smollm2).startswith("Smollm2")  # env beats the file
    assert model_used("--model", tiny_r1, PONDER_MODEL=smollm2).startswith("Tiny R1")  # the flag beats both
    assert run_ponder("config", "set", "reasoning", "hide", env=stores).returncode == 0
    hidden = run_ponder("ask", "What is 12*7?", env=stores)
    assert hidden.stdout.decode().startswith("12 × 7 = 84") and b"10*7" not in hidden.stderr
    shown = run_ponder("config", "show", env=stores).stdout.decode()
    assert f"model = {tiny_r1}" in shown and "reasoning = hide" in shown


def test_config_errors_name_the_key(stores):
    bad = run_ponder("config", "set", "temperature", "hot", env=stores)
    assert bad.returncode == 2 and b"temperature must be a number, 0 or more, not 'hot'" in bad.stderr
    unknown = run_ponder("config", "set", "colour", "blue", env=stores)
    assert unknown.returncode == 2 and b"unknown key 'colour'" in unknown.stderr
    Path(stores["PONDER_CONFIG"]).write_text('top_p = 3\n')
    result = run_ponder("ask", "hi", env=stores)
    assert result.returncode == 2 and b"top_p in " in result.stderr and b"must be a number in (0, 1]" in result.stderr
    Path(stores["PONDER_CONFIG"]).write_text('top_p = [\n')
    result = run_ponder("ask", "hi", env=stores)
    assert result.returncode == 2 and b"is not valid TOML" in result.stderr and b"Traceback" not in result.stderr
    assert run_ponder("config", "path", env=stores).stdout.decode().strip() == stores["PONDER_CONFIG"]
