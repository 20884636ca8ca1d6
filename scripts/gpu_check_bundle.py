"""scripts/gpu-check's bundle: what a GPU run needs that a machine without internet lacks, in one folder.

    python scripts/gpu_check_bundle.py make DIR [--python 3.12] [--max-mib 64]   (the repo's .venv Python: it
                                                   fetches or builds the test models as the test fixtures do)
    python scripts/gpu_check_bundle.py verify DIR                  every file against MANIFEST.json
    python scripts/gpu_check_bundle.py unpack-models DIR CACHE     the models into a test cache (PONDER_TEST_CACHE);
                                                                   prints the fixtures whose model is not there

The folder: MANIFEST.json; llama-cpp-python's source with its vendored llama.cpp, less what a build of the
library, llama-bench and llama-batched-bench does not need (~2 MB of 76); wheels/ for the target Python and this
machine's platform (pip download --only-binary); models/: the test models, xz-compressed, in order of use as many
as fit under --max-mib. SmolLM2 (93 MB) never fits 64 MiB: its tests are skipped in an offline run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support: the models, where the fixtures keep them
VERSION = os.environ.get("LLAMA_CPP_PYTHON_VERSION", "0.3.36")
MIB = 2**20
# Test deps the GPU test files import (no MLX: the GPU run is llama.cpp's), and the two build backends.
TEST_DEPS = ("pytest", "hypothesis", "pexpect", "gguf")
BUILD_DEPS = ("setuptools>=68", "scikit-build-core>=0.9.2")
# The tools the GPU run builds: tools/CMakeLists.txt is cut down to these, so the default target builds
# nothing else (the other tools' sources stay out of the bundle).
TOOLS = ("batched-bench", "llama-bench")
# What a Linux build does not read: other backends, tests, docs, models for llama.cpp's own tests, UI.
DROP = (".git", ".github", "docker", "docs", "examples", "tests")
DROP_VENDORED = ("models", "docs", "examples", "tests", "benches", "scripts", "gguf-py", "conversion", ".github",
                 ".devops", "media", "grammars", "pocs", "app", "ci", "skills", "requirements",
                 "vendor/miniaudio/miniaudio.h", "vendor/stb/stb_image.h")  # headers of llava's (its targets stay)
KEEP_GGML = {"ggml-cpu", "ggml-cuda"}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def pip(python: str, *args: str) -> None:
    subprocess.run([python, "-m", "pip", *args], check=True)


# --- the source ---------------------------------------------------------------------------------------


def sdist(python: str) -> Path:
    """llama-cpp-python's sdist, downloaded once into the CI cache (76 MB)."""
    cache = Path(os.environ.get("PONDER_CACHE", Path.home() / ".cache" / "ponder-ci")) / "sdist"
    path = cache / f"llama_cpp_python-{VERSION}.tar.gz"
    if not path.exists():
        with tempfile.TemporaryDirectory() as tmp:
            pip(python, "download", "--quiet", "--no-deps", "--no-binary", ":all:", "-d", tmp,
                f"llama-cpp-python=={VERSION}")
            cache.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / path.name), path)
    return path


def trimmed_source(python: str, out: Path) -> dict:
    """The sdist less what the build does not need, as tar.xz; tools/CMakeLists.txt names TOOLS alone."""
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(sdist(python)) as tar:
            tar.extractall(tmp, filter="data")
        top = Path(tmp) / f"llama_cpp_python-{VERSION}"
        vendored = top / "vendor" / "llama.cpp"
        for path in [top / name for name in DROP] + [vendored / name for name in DROP_VENDORED]:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        for backend in (vendored / "ggml" / "src").iterdir():
            if backend.is_dir() and backend.name not in KEEP_GGML:
                shutil.rmtree(backend)
        tools = vendored / "tools"
        for tool in tools.iterdir():
            if tool.is_dir() and tool.name not in TOOLS:
                shutil.rmtree(tool)
        (tools / "CMakeLists.txt").write_text(
            "# Cut down by ponder's scripts/gpu_check_bundle.py: only the tools scripts/gpu-check runs.\n"
            "find_package(Threads REQUIRED)\nllama_add_compile_flags()\n"
            + "".join(f"add_subdirectory({tool})\n" for tool in TOOLS))
        with lzma.open(out, "wb", preset=6) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
            tar.add(top, arcname=top.name)
    return {"file": out.name, "top": f"llama_cpp_python-{VERSION}", "version": VERSION}


# --- the wheels ----------------------------------------------------------------------------------------


def requirements(python_version: str) -> list[str]:
    """ponder's dependencies for Linux on this machine (llama-cpp-python is built, not fetched), llama-cpp-python's
    own, the build backends, and what the GPU test files import."""
    from packaging.requirements import Requirement

    env = {"platform_system": "Linux", "sys_platform": "linux", "platform_machine": platform.machine(),
           "python_version": python_version, "python_full_version": python_version + ".0",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix",
           "extra": ""}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = []
    for text in project["project"]["dependencies"]:
        req = Requirement(text)
        if req.name != "llama-cpp-python" and (req.marker is None or req.marker.evaluate(env)):
            wanted.append(str(req))
    test = {Requirement(t).name: t for t in project["dependency-groups"]["test"]}
    wanted += [test.get(name, name) for name in TEST_DEPS]
    wanted += ["typing-extensions>=4.5.0", "diskcache>=5.6.1", *BUILD_DEPS]  # llama-cpp-python's own, then builds
    return wanted


def glibc_platforms() -> list[str]:
    """manylinux tags up to this machine's glibc: pip download matches each tag exactly."""
    machine = platform.machine()
    libc, version = platform.libc_ver()
    top = int(version.split(".")[1]) if libc == "glibc" and version else 28
    return [f"manylinux_2_{n}_{machine}" for n in range(17, top + 1)] + [f"manylinux2014_{machine}"]


def wheels(python: str, python_version: str, out: Path) -> list[str]:
    wanted = requirements(python_version)
    args = ["download", "--quiet", "--only-binary=:all:", "--python-version", python_version, "--implementation",
            "cp", "--abi", "cp" + python_version.replace(".", ""), "--abi", "abi3", "--abi", "none", "-d", str(out)]
    for tag in glibc_platforms():
        args += ["--platform", tag]
    pip(python, *args, *wanted)
    return wanted


# --- the models ----------------------------------------------------------------------------------------


def test_models() -> list[tuple[str, Path]]:
    """(fixture, path) by use: most GPU tests run on the trained tiny R1, a few on the random one, some on SmolLM2."""
    from tests.support.packages import smollm2_gguf
    from tests.support.tiny_r1 import random_gguf, trained_gguf

    return [("tiny_r1", trained_gguf()), ("tiny_r1_random", random_gguf()), ("smollm2", smollm2_gguf())]


def noise(rows: int, cols: int):
    """The embedding rows of tokens no training pair uses, as tests/support/tiny_r1.py's _weights makes them."""
    import numpy as np

    return np.random.default_rng(0).normal(0, 0.02, (rows, cols)).astype(np.float32).astype(np.float16)


def regenerable(data: bytes) -> dict | None:
    """Where a GGUF holds the tiny R1's embedding of that noise (its last row, no token a pair uses, found in
    the file): the bytes to XOR with it, which then are nearly all zeros. None for any other model."""
    import numpy as np

    from tests.support.tiny_r1 import CONFIG, VOCAB

    rows, cols = VOCAB, CONFIG["hidden"]
    expected = noise(rows, cols)
    end = data.find(expected[-1].tobytes())
    offset = end - (rows - 1) * cols * 2
    if end < 0 or offset < 0:
        return None
    found = np.frombuffer(data, dtype=np.uint16, count=rows * cols, offset=offset)
    if (found == expected.view(np.uint16).ravel()).mean() < 0.9:
        return None
    return {"offset": offset, "rows": rows, "cols": cols}


def xor_noise(data: bytearray, spec: dict) -> None:
    import numpy as np

    start, length = spec["offset"], spec["rows"] * spec["cols"] * 2
    region = np.frombuffer(memoryview(data)[start:start + length], dtype=np.uint16)
    region ^= noise(spec["rows"], spec["cols"]).view(np.uint16).ravel()


def pack_model(fixture: str, path: Path, out_dir: Path, cache: Path) -> dict:
    data = bytearray(path.read_bytes())
    spec = regenerable(bytes(data))
    if spec:
        xor_noise(data, spec)
    out = out_dir / f"{path.name}.xz"
    out.write_bytes(lzma.compress(bytes(data), preset=6))
    entry = {"fixture": fixture, "file": out.name, "cache_path": str(path.relative_to(cache)), "size": path.stat().st_size,
             "sha256": sha256(path), "xor_noise": spec}
    with tempfile.TemporaryDirectory() as tmp:  # the round trip, checked before it is relied on
        unpack_model(out_dir.parent, entry, Path(tmp))
    return entry


def unpack_model(bundle: Path, entry: dict, cache: Path) -> Path:
    target = cache / entry["cache_path"]
    if target.exists() and target.stat().st_size == entry["size"] and sha256(target) == entry["sha256"]:
        return target
    data = bytearray(lzma.decompress((bundle / "models" / entry["file"]).read_bytes()))
    if entry["xor_noise"]:
        xor_noise(data, entry["xor_noise"])
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise SystemExit(f"gpu-check: {entry['file']} did not unpack to the model it was made from "
                         "(numpy's generator changed?); make the bundle again")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    partial.rename(target)
    return target


def mlx_stand_ins(cache: Path, models: list[Path]) -> None:
    """Fixtures that take both backends' models (test_thinking's r1) also ask for the MLX directory; the GPU run
    deselects the MLX tests, so an empty directory of the cached name stands in (mlx_dir looks no further)."""
    from tests.support.mlx_models import FORMAT_VERSION

    for model in models:
        full = cache / "mlx" / f"{model.stem}-v{FORMAT_VERSION}"
        full.mkdir(parents=True, exist_ok=True)
        (full / "model.safetensors").touch()
        (full.with_name(full.name + "-8bit")).mkdir(exist_ok=True)
        (full.with_name(full.name + "-8bit") / "config.json").touch()


# --- the commands --------------------------------------------------------------------------------------


def make(out: Path, python_version: str, max_mib: float) -> None:
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"gpu-check: {out} is not empty; give a new folder")
    (out / "wheels").mkdir(parents=True)
    (out / "models").mkdir()
    python = sys.executable
    print(f"gpu-check bundle: llama-cpp-python {VERSION} source, trimmed", file=sys.stderr)
    source = trimmed_source(python, out / f"llama_cpp_python-{VERSION}-source.tar.xz")
    print(f"gpu-check bundle: wheels for Python {python_version}", file=sys.stderr)
    wanted = wheels(python, python_version, out / "wheels")
    from tests.support.packages import cache_dir

    budget, models, left_out = max_mib * MIB - size_of(out) - 64 * 1024, [], []  # 64 KiB for the manifest
    for fixture, path in test_models():
        print(f"gpu-check bundle: model {path.name}", file=sys.stderr)
        entry = pack_model(fixture, path, out / "models", cache_dir())
        packed = (out / "models" / entry["file"]).stat().st_size
        if packed <= budget:
            budget -= packed
            models.append(entry)
        else:
            (out / "models" / entry["file"]).unlink()
            left_out.append({"fixture": fixture, "file": path.name, "packed_mib": round(packed / MIB, 1)})
    files = {str(p.relative_to(out)): {"size": p.stat().st_size, "sha256": sha256(p)}
             for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {"format": 1, "python": python_version, "machine": platform.machine(), "source": source,
                "requirements": wanted, "models": models, "left_out": left_out, "files": files,
                "ponder_commit": git_commit(), "max_mib": max_mib}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"gpu-check bundle: {out}: {size_of(out) / MIB:.1f} MiB (at most {max_mib:g}); models: "
          f"{', '.join(m['fixture'] for m in models) or 'none'}"
          + (f"; left out: {', '.join(m['fixture'] + ' (' + str(m['packed_mib']) + ' MiB)' for m in left_out)}"
             if left_out else ""), file=sys.stderr)


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def git_commit() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "unknown"


def read_manifest(bundle: Path) -> dict:
    try:
        return json.loads((bundle / "MANIFEST.json").read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"gpu-check: {bundle} is not a bundle (MANIFEST.json: {exc})")


def verify(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    for name, facts in manifest["files"].items():
        path = bundle / name
        if not path.is_file() or path.stat().st_size != facts["size"] or sha256(path) != facts["sha256"]:
            raise SystemExit(f"gpu-check: {path} is missing or damaged; copy the bundle again")


def unpack_models(bundle: Path, cache: Path) -> None:
    manifest = read_manifest(bundle)
    paths = [unpack_model(bundle, entry, cache) for entry in manifest["models"]]
    mlx_stand_ins(cache, paths)
    print(",".join(m["fixture"] for m in manifest["left_out"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    made = sub.add_parser("make")
    made.add_argument("dir", type=Path)
    made.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}")
    made.add_argument("--max-mib", type=float, default=64)
    sub.add_parser("verify").add_argument("dir", type=Path)
    unpacked = sub.add_parser("unpack-models")
    unpacked.add_argument("dir", type=Path)
    unpacked.add_argument("cache", type=Path)
    args = parser.parse_args()
    try:
        if args.command == "make":
            if not re.fullmatch(r"3\.\d{1,2}", args.python):
                raise SystemExit(f"gpu-check: --python wants a version such as 3.12, not {args.python!r}")
            make(args.dir, args.python, args.max_mib)
        elif args.command == "verify":
            verify(args.dir)
        else:
            unpack_models(args.dir, args.cache)
    except subprocess.CalledProcessError as exc:  # pip said why, above
        raise SystemExit(f"gpu-check: failed: {' '.join(map(str, exc.cmd[:4]))} ... (exit {exc.returncode})")


if __name__ == "__main__":
    main()
