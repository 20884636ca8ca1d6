"""A model on an OpenAI-compatible server: vLLM, SGLang, llama-server, Ollama, LM Studio, mlx_lm.server.

Two routes, chosen once when connecting:
- `/v1/completions` with a prompt ponder renders itself, where the server takes raw prompts and ponder
  can learn the model's template (llama-server's /props; a hub model's tokenizer config in the local
  hub cache): the model then sees exactly the prompt a local backend gives it, `<think>\\n` included.
- `/v1/chat/completions` otherwise, where the server renders its own template.
Reasoning may come back in `delta.reasoning_content`, `delta.reasoning`, or raw in `content`; raw
text goes through ponder's own splitter, like a local backend's.

What the server is: server_facts; its HTTP: server_http; requests adapted to refusals: server_adapt;
the stream decoded: server_stream.
"""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Iterator

from ponder.backends.base import ModelInfo
from ponder.backends.server_adapt import Adaptations
from ponder.backends.server_constraint import AnswerGrammars, Answers, Constrained, constrained
from ponder.backends.server_facts import ServerFacts, chat_format, describe, pick_model, survey
from ponder.backends.server_errors import ServerRefused, StreamBroken
from ponder.backends.server_http import ServerClient
from ponder.backends.server_stream import ChoiceStream
from ponder.errors import BackendError
from ponder.events import Continuation, GenerationParams, Message
from ponder.threads import Cancel

__all__ = ["NAME", "ServerFacts", "ServerModel", "connect", "describe"]

NAME = "server"
RAW_PROMPT_KINDS = ("llama-server", "vLLM", "SGLang")  # known to complete a raw prompt as given
ROUTES = {"/completions": "/v1/completions, prompt rendered by ponder",
          "/chat/completions": "/v1/chat/completions, prompt rendered by the server"}
TRIES = 3  # requests adapted to the server's refusals, after the first


def connect(url: str, model: str | None = None, read_timeout: float | None = None,
            reasoning: bool | None = None, preferred: str | None = None) -> ServerModel:
    """The server's model `model` (the only one it serves, if None), ready to stream.

    `preferred`: a model named by a setting rather than on the command line, used only if the
    server serves it. `reasoning` overrides whether the model thinks in `<think>` tags (else: its
    template, its name).
    """
    client = ServerClient(url, read_timeout)
    try:
        facts = survey(client)
        name = pick_model(facts, model, preferred)
        chat = chat_format(facts, name, reasoning)
        raw_prompts = bool(chat.template) and facts.kind in RAW_PROMPT_KINDS
    except BaseException:
        client.close()
        raise
    context = facts.contexts.get(name, 0)
    info = ModelInfo(
        name=name, path=facts.url, backend=f"{NAME} ({facts.kind})", context=context,
        trained_context=context, chat=chat, renders_prompt=raw_prompts,
        native_budget=facts.kind == "vLLM" and not raw_prompts,
    )
    return ServerModel(info, client, facts)


class ServerModel:
    """A model on a server. `lane()` gives another handle on it for requests in flight at once
    (each handle runs one generation at a time on a thread of its own, as a local model does).
    Every handle shares the client, and with it the registry of the cancels in flight: `stop()`
    ends every request of every lane at once, and leaves the model usable."""

    def __init__(self, info: ModelInfo, client: ServerClient, facts: ServerFacts):
        self.info, self.client, self.facts = info, client, facts
        self.adaptations = Adaptations()  # learnt from the server's refusals, for every lane
        self.takes_n = True  # several choices in one request, until the server refuses them
        self.grammars = AnswerGrammars(lambda path, body: client.post_json(path, body, from_root=True))  # (llama-server's)
        self._lock = threading.Lock()
        self._lanes: list[ServerModel] = []  # shared by every lane: each has a thread for good

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

    def stop(self) -> None:
        """End every request in flight on every lane (each as cancelled, at once, whatever it waits for)."""
        self.client.stop()

    def close(self) -> None:
        """Stop every request in flight, for good, and close the connection."""
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
        refuses it gives none: the caller draws the rest as separate requests. A broken stream
        keeps every choice that had finished; only the others end "interrupted"."""
        path, body, shape = self.constrained_request(prompt, params)
        answers = Answers(shape, self.facts.kind)  # (unchanged where nothing is constrained)
        if n > 1:
            if not self.takes_n:
                return
            body["n"] = n
        cancel = cancel if cancel is not None else Cancel()
        decoded = ChoiceStream(n, ROUTES[path])
        try:
            for event in self._events(path, body, cancel):
                yield from answers.feed(decoded.feed(event))
                if cancel.is_set():
                    break
            if not cancel.is_set() and not decoded.choices:
                raise self._not_openai()
        except StreamBroken as exc:
            yield from answers.feed(decoded.ends(error=exc.one_line()))
            return
        except ServerRefused as refused:
            if n > 1 and re.search(r"\bn\b", refused.said):
                self.takes_n = False  # this server takes one choice per request
                return
            raise
        yield from answers.feed(decoded.ends(cancelled=cancel.is_set()))

    def _not_openai(self) -> BackendError:
        url = self.facts.url.rstrip("/")
        return BackendError("the server's stream held no choices: it does not speak the OpenAI API there",
                            hint="is --server an OpenAI-compatible server (vLLM, SGLang, llama-server, Ollama, "
                                 "LM Studio)?" if url.endswith("/v1") else
                                 f"--server is the API's base URL, usually ending in /v1, e.g. {url}/v1")

    def request(self, prompt: str | list[Message], params: GenerationParams) -> tuple[str, dict]:
        """The endpoint and body for one generation."""
        path, body, _ = self.constrained_request(prompt, params)
        return path, body

    def constrained_request(self, prompt, params: GenerationParams) -> tuple[str, dict, Constrained | None]:
        """The endpoint and body for one generation, and how its answer is constrained (None: it is not).
        A constraint this server cannot apply to the answer alone is a UsageError, before any request."""
        body: dict = {"model": self.info.name, "stream": True, "stream_options": {"include_usage": True},
                      "temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens}
        if params.seed is not None:
            body["seed"] = params.seed
        if params.think_budget is not None and self.info.reasoning_end == "server" and not isinstance(prompt, Continuation):
            body["thinking_token_budget"] = params.think_budget
        given = prompt
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
        shape = None
        if params.constraint is not None:
            shape = self._constrained(given, body.get("prompt", ""), params)
            body.update(shape.fields)
        return path, self.adaptations.apply(body), shape

    def _constrained(self, given, prompt: str, params: GenerationParams) -> Constrained:
        """`params.constraint` as this server takes it (see server_constraint); `given`: the prompt as asked
        (a Continuation whose closing text ended the reasoning constrains from its first token)."""
        from ponder.grammar import closes_reasoning

        reasoning = self.info.chat.reasoning
        closed = closes_reasoning(given, reasoning) if not isinstance(given, list) else not reasoning
        return constrained(self.facts.kind, not isinstance(given, list), reasoning, closed, params.constraint,
                           self.grammars, prompt)

    def _events(self, path: str, body: dict, cancel: threading.Event) -> Iterator[dict]:
        """The stream, with the body adapted to a server that refuses one of its optional fields
        (for good) or a max_tokens beyond its context (for this request); ContextOverflow where
        the server says the prompt does not fit."""
        for attempt in range(TRIES + 1):
            try:
                yield from self.client.events(path, body, cancel)
                return
            except ServerRefused as refused:
                if attempt == TRIES:
                    raise self.adaptations.explained(refused) from None
                body = self.adaptations.retry(refused, body)
