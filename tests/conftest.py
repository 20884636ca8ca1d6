from __future__ import annotations

import signal

import pytest

# Run from a background job or under nohup, this process ignores SIGINT (or SIGHUP), and every ponder it
# starts would inherit that: the tests that press Ctrl-C or hang up would then wait for nothing. A handler
# of its own (which exec resets to the default) gives each ponder the disposition a user's shell gives it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
    signal.signal(signal.SIGHUP, lambda signum, frame: None)


@pytest.fixture(autouse=True)
def _own_prompt_cache(tmp_path_factory, monkeypatch):
    """Commands run in-process keep their prompt cache apart from the user's (ponder_env does the same for
    subprocesses), one folder a test: no test loads what another stored."""
    monkeypatch.setenv("PONDER_CACHE_DIR", str(tmp_path_factory.mktemp("prompt-cache")))


@pytest.fixture(scope="session")
def smollm2() -> str:
    from tests.support.packages import smollm2_gguf

    return str(smollm2_gguf())


@pytest.fixture(scope="session")
def tiny_r1_random() -> str:
    from tests.support.tiny_r1 import random_gguf

    return str(random_gguf())


@pytest.fixture(scope="session")
def tiny_r1() -> str:
    """The overfitted tiny model that answers TRAINING_PAIRS in R1's shape."""
    from tests.support.tiny_r1 import trained_gguf

    return str(trained_gguf())


@pytest.fixture(scope="session")
def tiny_r1_mlx(tiny_r1) -> str:
    """The same trained tiny model as an MLX directory (float32, tokenizer.json from the GGUF)."""
    from pathlib import Path

    from tests.support.mlx_models import mlx_dir

    return str(mlx_dir(Path(tiny_r1)))


@pytest.fixture(scope="session")
def tiny_r1_random_mlx(tiny_r1_random) -> str:
    from pathlib import Path

    from tests.support.mlx_models import mlx_dir

    return str(mlx_dir(Path(tiny_r1_random)))


@pytest.fixture(scope="session")
def smollm2_mlx(smollm2) -> str:
    """SmolLM2 as an 8-bit MLX directory, quantized by mlx_lm.convert as mlx-community's are."""
    from pathlib import Path

    from tests.support.mlx_models import mlx_dir

    return str(mlx_dir(Path(smollm2), bits=8))


# --- real OpenAI-compatible servers on loopback ---------------------------------------------


@pytest.fixture(scope="session")
def llama_server(tiny_r1):
    """llama.cpp's llama-server on the tiny R1 (-c 2048 -np 4 --reasoning-format deepseek), with
    the R1 template that opens <think>: thinking streams as delta.reasoning_content on its chat
    endpoint. Built once by scripts/llama-server (minutes the first time)."""
    from tests.support.servers import llama_server, r1_think_template

    with llama_server(tiny_r1, chat_template=r1_think_template(tiny_r1)) as server:
        yield server


@pytest.fixture(scope="session")
def llama_cpp_python_server_smollm2(smollm2):
    """llama-cpp-python's own server on SmolLM2: raw content, a model that does not reason.
    It interrupts a running request when another arrives unless told not to."""
    from tests.support.servers import llama_cpp_python_server

    with llama_cpp_python_server(smollm2, interrupt_requests="False") as server:
        yield server


@pytest.fixture(scope="session")
def mlx_lm_server(tiny_r1, tiny_r1_mlx):
    """mlx_lm.server on the tiny R1's MLX directory, with the R1 template that opens <think>:
    thinking streams as delta.reasoning."""
    from tests.support.servers import mlx_lm_server, r1_think_template

    with mlx_lm_server(tiny_r1_mlx, chat_template=r1_think_template(tiny_r1)) as server:
        yield server


@pytest.fixture
def fault_proxy(llama_server):
    """A FaultProxy in front of the session's llama-server; a test sets its faults."""
    from tests.support.fault_proxy import FaultProxy

    with FaultProxy(llama_server.url) as proxy:
        yield proxy


# --- the GPU run (scripts/gpu-check) -----------------------------------------------------------------


def pytest_addoption(parser):
    parser.addoption("--gpu", action="store_true", help="every llama.cpp model a test loads in this process must "
                     "have all its layers on the GPU, unless the test asks for fewer (scripts/gpu-check)")


def pytest_configure(config):
    import os

    if config.getoption("--gpu"):
        _require_full_offload()
    for name in os.environ.get("PONDER_TEST_MODELS_ABSENT", "").split(","):
        if name:
            _absent(name)


def _absent(fixture: str) -> None:
    """A model the GPU run's bundle could not hold (scripts/gpu-check names them): what makes it skips instead,
    so its fixture's tests are skipped, however they ask for it."""
    import importlib

    module, function = {"smollm2": ("packages", "smollm2_gguf"), "tiny_r1": ("tiny_r1", "trained_gguf"),
                        "tiny_r1_random": ("tiny_r1", "random_gguf")}[fixture]

    def skip():
        pytest.skip(f"no {fixture} model in this bundle (scripts/gpu-check --bundle --max-mib ...)")

    setattr(importlib.import_module(f"tests.support.{module}"), function, skip)


def layers_on_gpu(log: str) -> tuple[int, int]:
    """(layers on a GPU, layers) from llama.cpp's log of a load: a line a layer, the output layer too."""
    import re

    devices = re.findall(r"load_tensors: layer +\d+ assigned to device ([^,\s]+)", log)
    return sum(device != "CPU" for device in devices), len(devices)


def _require_full_offload():
    """Each LlamaCppModel load watched through llama.cpp's log (its API does not say where layers went): what it
    found stays on the model as `gpu_layers_seen`; fewer than all on the GPU fails the load."""
    import ctypes

    import llama_cpp as lib

    from ponder.backends import llamacpp, llamacpp_setup

    load = llamacpp.LlamaCppModel.__init__

    def watched(self, path, options):
        lines = []

        @lib.llama_log_callback
        def watch(level, text, user_data):
            lines.append(text.decode("utf-8", "replace"))
            llamacpp_setup._on_log(level, text, user_data)  # ponder's own log, as without --gpu

        lib.llama_log_set(watch, ctypes.c_void_p(0))
        try:
            load(self, path, options)
        finally:
            lib.llama_log_set(llamacpp_setup._on_log, ctypes.c_void_p(0))
        self.gpu_layers_seen = on_gpu, total = layers_on_gpu("".join(lines))
        if options.gpu_layers is None and not 0 < on_gpu == total:
            self.close()
            raise AssertionError(f"--gpu: {on_gpu} of {total} layers of {path} on the GPU")

    llamacpp.LlamaCppModel.__init__ = watched
