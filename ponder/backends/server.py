"""A model on an OpenAI-compatible server: vLLM, SGLang, llama-server, Ollama, LM Studio, mlx_lm.server.

Two routes, chosen once when connecting:
- `/v1/completions` with a prompt ponder renders itself, where the server takes raw prompts and ponder
  can learn the model's template (llama-server's /props; a hub model's tokenizer config in the local
  hub cache): the model then sees exactly the prompt a local backend gives it, `<think>\\n` included.
- `/v1/chat/completions` otherwise, where the server renders its own template.
Reasoning may come back in `delta.reasoning_content`, `delta.reasoning`, or raw in `content`; raw
text goes through ponder's own splitter, like a local backend's.
"""

from __future__ import annotations

import copy
import os
import re
import threading
import time
from urllib.parse import urlsplit
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ponder.backends.base import ModelInfo
from ponder.backends.server_http import ServerClient, ServerRefused, StreamBroken
from ponder.errors import BackendError, ModelError, PonderError
from ponder.events import BackendStats, Continuation, Finished, GenerationParams, Message, TextDelta
from ponder.prompt import ChatFormat, is_reasoning_model

NAME = "server"
RAW_PROMPT_KINDS = ("llama-server", "vLLM", "SGLang")  # known to complete a raw prompt as given
# `owned_by` in /v1/models, as each server fills it in.
OWNERS = {"vllm": "vLLM", "sglang": "SGLang", "llamacpp": "llama-server", "library": "Ollama", "ollama": "Ollama",
          "organization_owner": "LM Studio", "mlx_lm": "mlx_lm.server", "mlx-lm": "mlx_lm.server",
          "me": "llama-cpp-python"}
# Names of <think>-style model families, for a server that shows no template.
REASONING_NAMES = re.compile(r"(?i)(\br1\b|-r1|r1-|qwq|think|reason|magistral|gpt-oss)")
FINISH_REASONS = {"stop": "stop", "eos": "stop", "length": "length", "max_tokens": "length"}
ROUTES = {"/completions": "/v1/completions, prompt rendered by ponder",
          "/chat/completions": "/v1/chat/completions, prompt rendered by the server"}


def api_key(url: str) -> str | None:
    """PONDER_API_KEY; else OPENAI_API_KEY, but only over https or to this machine: a key meant for
    OpenAI must not travel in clear text to some other host."""
    if os.environ.get("PONDER_API_KEY"):
        return os.environ["PONDER_API_KEY"]
    parts = urlsplit(url)
    private = parts.scheme.lower() == "https" or (parts.hostname or "") in ("localhost", "127.0.0.1", "::1")
    return os.environ.get("OPENAI_API_KEY") or None if private else None


@dataclass
class ServerFacts:
    """What a server tells about itself: for `ponder backends` and `doctor`, and to connect."""

    url: str
    kind: str = "OpenAI-compatible server"
    version: str = ""
    models: list[str] = field(default_factory=list)
    contexts: dict[str, int] = field(default_factory=dict)  # tokens per request, where the server says
    props: dict = field(default_factory=dict)  # llama-server's /props

    def listed(self, most: int = 8) -> str:
        """The models, for a message: the first `most`, then how many more."""
        if not self.models:
            return "none"
        more = len(self.models) - most
        return ", ".join(self.models[:most]) + (f" and {more} more (`ponder backends --json` lists all)" if more > 0 else "")


def survey(client: ServerClient) -> ServerFacts:
    """Ask the server what it is and serves; BackendError if it cannot be reached."""
    listed = client.get_json("/models")
    entries = listed.get("data", []) if isinstance(listed, dict) else []
    entries = [e for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]
    facts = ServerFacts(client.shown, models=[e["id"] for e in entries])
    facts.contexts = {e["id"]: _context_of(e) for e in entries if _context_of(e)}
    owners = {str(e.get("owned_by", "")).lower() for e in entries}
    facts.kind = next((OWNERS[o] for o in owners if o in OWNERS), facts.kind)
    if entries and owners == {""} and client.try_json("/health", from_root=True) == {"status": "ok"}:
        facts.kind = "mlx_lm.server"  # the one that names no owner
    props = client.try_json("/props", from_root=True)
    if isinstance(props, dict) and ("default_generation_settings" in props or "chat_template" in props):
        facts.kind, facts.props = "llama-server", props
        facts.version = str(props.get("build_info", ""))
    elif facts.kind == "OpenAI-compatible server" or facts.kind == "Ollama":
        version = client.try_json("/api/version", from_root=True)
        if isinstance(version, dict) and "version" in version:
            facts.kind, facts.version = "Ollama", str(version["version"])
    return facts


def _context_of(entry: dict) -> int:
    """Tokens one request may use: vLLM's max_model_len, llama-server's meta.n_ctx (one slot's share)."""
    meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
    for value in (entry.get("max_model_len"), meta.get("n_ctx")):
        if isinstance(value, int) and value > 0:
            return value
    return 0


def connect(url: str, model: str | None = None, read_timeout: float | None = None,
            reasoning: bool | None = None, preferred: str | None = None) -> ServerModel:
    """The server's model `model` (the only one it serves, if None), ready to stream.

    `preferred`: a model named by a setting rather than on the command line, used only if the
    server serves it. `reasoning` overrides whether the model thinks in `<think>` tags (else: its
    template, its name).
    """
    client = ServerClient(url, api_key(url), read_timeout)
    try:
        facts = survey(client)
        name = _pick_model(facts, model, preferred)
        chat = _chat_format(facts, name, reasoning)
        raw_prompts = bool(chat.template) and facts.kind in RAW_PROMPT_KINDS
    except BaseException:
        client.close()
        raise
    context = facts.contexts.get(name, 0)
    info = ModelInfo(
        name=name, path=facts.url, backend=f"{NAME} ({facts.kind})", context=context,
        trained_context=context, chat=chat, renders_prompt=raw_prompts,
    )
    return ServerModel(info, client, facts)


def _pick_model(facts: ServerFacts, wanted: str | None, preferred: str | None = None) -> str:
    if wanted is None and preferred in facts.models:
        return preferred
    if not facts.models:
        raise ModelError(f"the server at {facts.url} serves no models yet", hint="load one into it, then try again")
    if wanted is None:
        if len(facts.models) == 1:
            return facts.models[0]
        raise ModelError(f"the server at {facts.url} serves {len(facts.models)} models; name one with --model",
                         hint=f"its models: {facts.listed()}")
    if wanted in facts.models:
        return wanted
    raise ModelError(f"the server at {facts.url} has no model {wanted!r}", hint=f"its models: {facts.listed()}")


def _chat_format(facts: ServerFacts, name: str, reasoning: bool | None) -> ChatFormat:
    template, bos, eos = None, "", ""
    if facts.props.get("chat_template"):
        props = facts.props
        template, bos, eos = props["chat_template"], props.get("bos_token") or "", props.get("eos_token") or ""
    else:
        template, bos, eos = _hub_template(name)
    if reasoning is None:
        reasoning = is_reasoning_model(template, []) if template else bool(REASONING_NAMES.search(name))
    return ChatFormat(template, bos, eos, reasoning)


def _hub_template(repo_id: str, cache_dir: str | None = None) -> tuple[str | None, str, str]:
    """The chat template of a hub model id from the local hub cache, if it is there (never downloads)."""
    if repo_id.count("/") != 1:
        return None, "", ""
    import json

    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(repo_id, "tokenizer_config.json", cache_dir=cache_dir)
        config = json.loads(Path(path).read_text(encoding="utf-8")) if isinstance(path, str) else {}
    except (OSError, ValueError):
        return None, "", ""
    if not isinstance(config, dict):
        return None, "", ""

    def token(value) -> str:
        return value.get("content", "") if isinstance(value, dict) else value or ""

    template = config.get("chat_template")
    return (template if isinstance(template, str) else None), token(config.get("bos_token")), token(config.get("eos_token"))


class ServerModel:
    """A model on a server. `lane()` gives another handle on it for requests in flight at once
    (each handle runs one generation at a time on a thread of its own, as a local model does)."""

    def __init__(self, info: ModelInfo, client: ServerClient, facts: ServerFacts):
        self.info, self.client, self.facts = info, client, facts
        self._adapted: dict = {}  # request fields this server wants otherwise, learnt from its refusals
        self.takes_n = True  # several choices in one request, until the server refuses them
        self._lock = threading.Lock()
        self._lanes: list[ServerModel] = []  # shared by every lane: each has a thread for good

    @property
    def native_budget(self) -> bool:
        """Whether the server itself bounds the reasoning (vLLM's thinking_token_budget on its chat route)."""
        return self.facts.kind == "vLLM" and not self.info.renders_prompt

    @property
    def route(self) -> str:
        """Which endpoint this model's requests go to, and who renders the prompt."""
        return ROUTES["/completions" if self.info.renders_prompt else "/chat/completions"]

    def lane(self, index: int) -> ServerModel:
        """The `index`th extra handle on this model, made once: requests on different lanes run at
        once (the server batches them), each lane's one after another."""
        with self._lock:
            while len(self._lanes) <= index:
                self._lanes.append(copy.copy(self))
            return self._lanes[index]

    def tokenize(self, text: str) -> list[int]:
        raise BackendError(f"{self.facts.kind} does not tokenize for ponder")

    def close(self) -> None:
        self.client.close()

    # --- generation -----------------------------------------------------------------------

    def stream(self, prompt: str | list[Message], params: GenerationParams,
               cancel: threading.Event | None = None) -> Iterator:
        for _, event in self.stream_choices(prompt, params, 1, cancel):
            yield event

    def stream_choices(self, prompt: str | list[Message], params: GenerationParams, n: int,
                       cancel: threading.Event | None = None) -> Iterator[tuple[int, object]]:
        """(choice index, event) pairs of one request for `n` choices: each choice's TextDeltas, then
        its Finished. A server that ignores `n` (Ollama and others) gives only choice 0; one that
        refuses it gives none: the caller draws the rest as separate requests."""
        path, body = self.request(prompt, params)
        if n > 1:
            if not self.takes_n:
                return
            body["n"] = n
        cancel = cancel or threading.Event()
        started = time.perf_counter()
        choices: dict[int, _Choice] = {}
        usage = None
        try:
            for chunk in self._events(path, body, cancel):
                usage = chunk.get("usage") or usage
                for raw in chunk.get("choices") or []:
                    if not isinstance(raw, dict):
                        raise StreamBroken(f"the server sent a malformed choice: {str(raw)[:80]!r}")
                    index = raw.get("index", 0) if isinstance(raw.get("index", 0), int) else 0
                    choice = choices.setdefault(index, _Choice())
                    choice.finish = raw.get("finish_reason") or choice.finish
                    for delta in choice.deltas(*_texts(raw)):
                        yield index, delta
                if cancel.is_set():
                    break
            if not cancel.is_set() and not choices:
                raise BackendError("the server's stream held no choices: it is not the OpenAI API",
                                   hint="--server is the API's base URL, usually ending in /v1, e.g. "
                                        f"{self.facts.url.rstrip('/')}/v1")
            if not cancel.is_set() and any(c.finish is None for c in choices.values()):
                raise StreamBroken("the server ended the stream before the reply finished")
        except StreamBroken as exc:
            error = exc.message + (f" ({exc.hint})" if exc.hint else "")
            for index, choice in sorted(choices.items()) or [(0, _Choice())]:
                yield index, Finished("interrupted", self._stats(path, choice, usage, n, started), error=error)
            return
        except ServerRefused as refused:
            if n > 1 and re.search(r"\bn\b", refused.said):
                self.takes_n = False  # this server takes one choice per request
                return
            raise
        for index, choice in sorted(choices.items()) or [(0, _Choice())]:
            stats = self._stats(path, choice, usage, n, started)
            if cancel.is_set():
                yield index, Finished("cancelled", stats)
            elif choice.finish in FINISH_REASONS:
                yield index, Finished(FINISH_REASONS[choice.finish], stats)
            else:  # vLLM's and SGLang's "abort", or a reason ponder does not know
                yield index, Finished("interrupted", stats, error=f"the server ended the reply: {choice.finish}")

    def request(self, prompt: str | list[Message], params: GenerationParams) -> tuple[str, dict]:
        """The endpoint and body for one generation."""
        body: dict = {"model": self.info.name, "stream": True, "stream_options": {"include_usage": True},
                      "temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens}
        if params.seed is not None:
            body["seed"] = params.seed
        if params.think_budget is not None and self.native_budget and not isinstance(prompt, Continuation):
            body["thinking_token_budget"] = params.think_budget
        if isinstance(prompt, Continuation):  # raw text goes on as text: the server tokenizes it again
            prompt = prompt.prompt + prompt.text + prompt.forced
        if isinstance(prompt, str):
            path = "/completions"
            # The server adds the BOS token itself, as it tokenizes the text.
            bos = self.info.chat.bos_token
            body["prompt"] = prompt[len(bos):] if bos and prompt.startswith(bos) else prompt
        else:
            path = "/chat/completions"
            body["messages"] = [{"role": m.role, "content": m.content} for m in prompt]
        return path, self._adapt(body)

    def _events(self, path: str, body: dict, cancel: threading.Event) -> Iterator[dict]:
        """The stream, with the body adapted to a server that refuses one of its optional fields
        (for good) or a max_tokens beyond its context (for this request)."""
        for _ in range(3):
            try:
                yield from self.client.events(path, body, cancel)
                return
            except ServerRefused as refused:
                room = _room_left(refused.said)
                if room is not None and 0 < room < _max_tokens(body):
                    body = {**body, ("max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"): room}
                    continue
                change = _adaptation(refused, body)
                if change is None:
                    raise
                with self._lock:
                    self._adapted.update(change)
                body = self._adapt(body)
        yield from self.client.events(path, body, cancel)

    def _adapt(self, body: dict) -> dict:
        body = dict(body)
        with self._lock:
            adapted = dict(self._adapted)
        for name, value in adapted.items():
            if value is None:
                body.pop(name, None)
            elif name == "max_completion_tokens" and "max_tokens" in body:
                body["max_completion_tokens"] = body.pop("max_tokens")
        return body

    def _stats(self, path: str, choice: _Choice, usage, n: int, started: float) -> BackendStats:
        """Figures for one choice: the server's usage where it is this choice's alone, else counted."""
        usage = usage if isinstance(usage, dict) else {}
        own = usage if n == 1 else {}
        generated = int(own.get("completion_tokens") or choice.counted)
        details = own.get("completion_tokens_details") or {}
        reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
        now = time.perf_counter()
        first, last = choice.first or now, choice.last or now
        span = last - first
        return BackendStats(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            generated_tokens=generated,
            time_to_first_token_s=first - started if choice.counted else 0.0,
            decode_tokens_per_s=(generated - 1) / span if generated > 1 and span > 0 else 0.0,
            total_s=now - started,
            reasoning_tokens=int(reasoning) if isinstance(reasoning, int) and reasoning > 0 else None,
            route=ROUTES[path],
        )


@dataclass
class _Choice:
    """One choice of a streamed reply as it arrives."""

    counted: int = 0  # deltas, about one token each
    first: float | None = None
    last: float | None = None
    finish: str | None = None
    parsed: bool = False  # the server separates reasoning: its content is then answer

    def deltas(self, reasoning: str, content: str) -> list[TextDelta]:
        if not (reasoning or content):
            return []
        now = time.perf_counter()
        self.first, self.last = self.first or now, now
        self.counted += 1
        out = []
        if reasoning:
            self.parsed = True
            out.append(TextDelta(reasoning, 1, "reasoning"))
        if content:
            out.append(TextDelta(content, 0 if reasoning else 1, "answer" if self.parsed else None))
        return out


def _texts(choice: dict) -> tuple[str, str]:
    """(reasoning, content) of one streamed choice, whichever convention the server follows."""
    if "text" in choice and "delta" not in choice:  # /v1/completions
        return "", choice.get("text") or ""
    delta = choice.get("delta") or {}
    reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
    return (reasoning if isinstance(reasoning, str) else ""), (delta.get("content") or "")


def _adaptation(refused: ServerRefused, body: dict) -> dict | None:
    """A change to the request that meets a 400/422 refusing one of its optional fields."""
    if refused.status not in (400, 422):
        return None
    said = refused.said.lower()
    refuses = ("not supported", "unsupported", "unknown", "unrecognized", "not permitted", "extra inputs", "instead")
    if not any(word in said for word in refuses):
        return None
    if "stream_options" in said and "stream_options" in body:
        return {"stream_options": None}
    if "max_tokens" in said and "max_completion_tokens" in said and "max_tokens" in body:
        return {"max_completion_tokens": True}  # OpenAI's newer name
    if "seed" in said and "seed" in body:
        return {"seed": None}
    return None


def _room_left(said: str) -> int | None:
    """The tokens a request may still generate, from vLLM's and SGLang's refusal of a max_tokens beyond the
    context ("This model's maximum context length is 32768 tokens and your request has 20 input tokens")."""
    context = re.search(r"maximum context length is (\d+)", said)
    used = re.search(r"(\d+) input tokens|has (\d+) tokens? in the (?:messages|prompt)", said)
    if not (context and used):
        return None
    return int(context.group(1)) - int(used.group(1) or used.group(2))


def _max_tokens(body: dict) -> int:
    return int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)


def describe(url: str, read_timeout: float = 5.0) -> tuple[ServerFacts | None, str]:
    """What the server at `url` is and serves, or None and why it cannot be reached; never raises."""
    try:
        client = ServerClient(url, api_key(url), read_timeout)
    except PonderError as exc:
        return None, exc.message
    try:
        return survey(client), ""
    except PonderError as exc:
        return None, exc.message
    except Exception as exc:  # whatever a strange server or proxy does, doctor must go on
        return None, f"{type(exc).__name__}: {client.redact(str(exc)[:200])}"
    finally:
        client.close()
