"""Real OpenAI-compatible inference servers on free loopback ports, for end-to-end tests.

    with llama_server(tiny_r1) as server:       # llama.cpp's llama-server binary
        httpx2.post(f"{server.url}/chat/completions", json=...)

- `llama_cpp_python_server(model_path, **extra)`: `python -m llama_cpp.server` (extra: its
  `--name value` settings, e.g. `n_ctx=4096`, `api_key="secret"`, `model_alias="tiny"`).
- `llama_server(model_path, *extra_args)`: llama.cpp's `llama-server`, built once by
  scripts/llama-server (minutes, the first time); by default `-c 2048 -np 4 --reasoning-format
  deepseek`: a reasoning model's thinking comes back in `delta.reasoning_content` when the chat
  template's generation prompt ends with "<think>\\n" (pass `chat_template=r1_think_template(gguf)`
  for the tiny R1, whose GGUF carries DeepSeek's older template without it).
- `mlx_lm_server(model_dir, *extra_args)`: `python -m mlx_lm server` (CPU mlx on Linux); with
  that template the thinking comes back in `delta.reasoning`.

Each returns a `RunningServer`: a context manager that starts the command, waits until
`GET /v1/models` answers 200, and stops the process (and its process group) on exit. The server's
stdout and stderr go to `log_path` (in a temporary folder removed at the stop), whose tail is in
the error when it fails to start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0


def free_port() -> int:
    """A TCP port that nothing listens on now on 127.0.0.1 (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    pass


class RunningServer:
    """`command` run with the port it should listen on; `url` is "http://127.0.0.1:PORT/v1".
    `startup_s`: the seconds from the start until it answered (and warmed up)."""

    def __init__(self, command: list[str], port: int, *, name: str = "server", env: dict | None = None,
                 timeout: float = START_TIMEOUT, api_key: str | None = None, warmup: dict | None = None):
        """`warmup`: a /v1/completions body posted once ready, which must answer 200 (for a server
        that loads its model at the first request)."""
        self.command = [str(c) for c in command]
        self.port = port
        self.name = name
        self.env = env
        self.timeout = timeout
        self.api_key = api_key
        self.warmup = warmup
        self.base_url = f"http://127.0.0.1:{port}"  # for non-/v1 routes: /health, /props
        self.url = f"{self.base_url}/v1"
        self.log_path = Path(tempfile.mkdtemp(prefix=f"ponder-{name}-")) / "server.log"
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def __repr__(self) -> str:
        return f"<RunningServer {self.name} {self.url} pid={self.process and self.process.pid}>"

    def __enter__(self) -> RunningServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> None:
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})}, cwd=ROOT, start_new_session=True,
            )
        try:
            self._wait_ready(started)
            if self.warmup is not None:
                self._warm_up()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _wait_ready(self, started: float) -> None:
        headers = self._auth()
        last = "no answer"
        while time.monotonic() - started < self.timeout:
            if self.process.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.process.returncode} before answering "
                                  f"(command: {' '.join(self.command)}); log tail:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(urllib.request.Request(f"{self.url}/models", headers=headers),
                                            timeout=5) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as e:  # llama-server answers 503 while it loads the model
                last = f"HTTP {e.code}"
            except (OSError, urllib.error.URLError) as e:
                last = repr(e)
            time.sleep(0.2)
        raise ServerError(f"{self.name} did not answer GET {self.url}/models with 200 within {self.timeout:.0f} s "
                          f"(last: {last}; command: {' '.join(self.command)}); log tail:\n{self.log_tail()}")

    def _warm_up(self) -> None:
        request = urllib.request.Request(f"{self.url}/completions", data=json.dumps(self.warmup).encode(),
                                         headers={"Content-Type": "application/json", **self._auth()})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout):
                return
        except urllib.error.HTTPError as e:
            answer = f"HTTP {e.code}: {e.read()[:500]!r}"
        except OSError as e:
            answer = repr(e)
        raise ServerError(f"{self.name}: the warm-up request failed ({answer}; command: {' '.join(self.command)}); "
                          f"log tail:\n{self.log_tail()}")

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the server's process group, then SIGKILL it after `grace` seconds; the log's
        folder goes too (read `log_path` before)."""
        self._end(grace)
        shutil.rmtree(self.log_path.parent, ignore_errors=True)

    def _end(self, grace: float) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def llama_cpp_python_server(model_path, *, port: int | None = None, **extra) -> RunningServer:
    """llama-cpp-python's server; `extra` are its settings (`n_ctx=4096`, `api_key="secret"`)."""
    port = port or free_port()
    settings = {"n_ctx": 2048, **extra}
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path),
               "--host", "127.0.0.1", "--port", str(port)]
    for key, value in settings.items():
        command += [f"--{key}", str(value)]
    return RunningServer(command, port, name="llama-cpp-python", api_key=settings.get("api_key"))


def llama_server_binary() -> Path:
    """The llama-server binary, built once by scripts/llama-server (several minutes the first time)."""
    script = ROOT / "scripts" / "llama-server"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    path = Path(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else None
    if result.returncode != 0 or path is None or not os.access(path, os.X_OK):
        raise ServerError(f"could not build llama-server with {script} (exit {result.returncode}):\n"
                          f"{result.stderr[-3000:]}")
    return path


def llama_server(model_path, *extra_args: str, port: int | None = None, chat_template: str | None = None,
                 defaults: tuple[str, ...] = ("-c", "2048", "-np", "4", "--reasoning-format", "deepseek"),
                 ) -> RunningServer:
    """llama.cpp's llama-server. `extra_args` follow `defaults`, so a later flag wins
    (`llama_server(m, "--reasoning-format", "none")`); `--api-key K` is also used for the readiness
    check. `chat_template`: Jinja text that replaces the GGUF's (see `r1_think_template`)."""
    port = port or free_port()
    command = [str(llama_server_binary()), "-m", str(model_path), "--host", "127.0.0.1", "--port", str(port),
               *defaults, *extra_args]
    api_key = extra_args[extra_args.index("--api-key") + 1] if "--api-key" in extra_args else None
    server = RunningServer(command, port, name="llama-server", api_key=api_key)
    if chat_template is not None:
        path = server.log_path.parent / "chat_template.jinja"
        path.write_text(chat_template)
        server.command += ["--chat-template-file", str(path)]
    return server


def mlx_lm_server(model_dir, *extra_args: str, port: int | None = None, chat_template: str | None = None,
                  ) -> RunningServer:
    """mlx_lm's server for an MLX model directory (CPU mlx on Linux). It loads the model at the first
    request (GET /v1/models answers 200 even for a missing directory), so a one-token warm-up
    request is part of the start. Its GET /v1/models lists the Hugging Face cache too, and answers
    200 with an empty body when that cache directory is missing, so the server gets an empty cache
    of its own; offline, so that an unknown `model` fails at once (404) instead of trying the hub.
    `chat_template`: Jinja text that replaces the tokenizer's (see `r1_think_template`)."""
    port = port or free_port()
    command = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model_dir),
               "--host", "127.0.0.1", "--port", str(port), *extra_args]
    if chat_template is not None:
        command += ["--chat-template", chat_template]
    server = RunningServer(command, port, name="mlx_lm.server", warmup={"prompt": "Hi", "max_tokens": 1})
    hf_cache = server.log_path.parent / "hf-cache"
    hf_cache.mkdir()
    server.env = {"HF_HUB_CACHE": str(hf_cache), "HF_HUB_OFFLINE": "1"}
    return server


R1_GENERATION_PROMPT = "{{'<｜Assistant｜>'}}{% endif %}"


def r1_think_template(gguf_path) -> str:
    """The GGUF's DeepSeek-R1 chat template with "<think>\\n" after the final "<｜Assistant｜>", as
    DeepSeek's later template has it and as ponder renders its own prompts. The tiny R1 learned its
    answers only after that prefix: with the GGUF's own (older) template a server's chat endpoint
    gets a prompt without it and the model rambles ("74, 7. 7 the answer..."), with no `</think>`.
    With this template llama-server streams the thinking as `delta.reasoning_content` and
    mlx_lm.server as `delta.reasoning`. llama_cpp.server has no use for it (its hf-tokenizer-config
    chat format renders without add_generation_prompt): send it the prompt on /v1/completions."""
    import gguf

    field = gguf.GGUFReader(str(gguf_path)).fields["tokenizer.chat_template"]
    template = bytes(field.parts[field.data[0]]).decode()
    if not template.endswith(R1_GENERATION_PROMPT):
        raise ValueError(f"{gguf_path}: not the DeepSeek-R1 template that ends with {R1_GENERATION_PROMPT!r}")
    return template[: -len(R1_GENERATION_PROMPT)] + "{{'<｜Assistant｜><think>\\n'}}{% endif %}"
