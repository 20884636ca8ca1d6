"""What a server is and serves: its kind, models, contexts, and a model's chat template (/props, hub cache).

Its answers are checked for type: a model list that is not one is an error, entries that are not models
are left out."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ponder.backends.server_errors import visible
from ponder.backends.server_http import ServerClient
from ponder.errors import BackendError, ModelError, PonderError
from ponder.prompt import ChatFormat, is_reasoning_model

# `owned_by` in /v1/models, as each server fills it in.
OWNERS = {"vllm": "vLLM", "sglang": "SGLang", "llamacpp": "llama-server", "library": "Ollama", "ollama": "Ollama",
          "organization_owner": "LM Studio", "mlx_lm": "mlx_lm.server", "mlx-lm": "mlx_lm.server",
          "me": "llama-cpp-python"}
# Names of <think>-style model families, for a server that shows no template.
REASONING_NAMES = re.compile(r"(?i)(\br1\b|-r1|r1-|qwq|think|reason|magistral|gpt-oss)")


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
    """Ask the server what it is and serves; BackendError if it cannot be reached or its model list is
    not one. Entries of the list that are not models are left out."""
    listed = client.get_json("/models")
    entries = listed.get("data") if isinstance(listed, dict) else None
    if not isinstance(entries, list):
        raise BackendError(f"{client.shown}/models did not answer with a list of models",
                           hint="--server is the API's base URL, usually ending in /v1, e.g. http://host:8000/v1")
    # (an id with control characters is no model's: it would reach the terminal in messages)
    entries = [e for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str) and e["id"]
               and e["id"].isprintable()]
    facts = ServerFacts(client.shown, models=list(dict.fromkeys(e["id"] for e in entries)))
    facts.contexts = {e["id"]: _context_of(e) for e in entries if _context_of(e)}
    owners = {str(e.get("owned_by", "")).lower() for e in entries}
    facts.kind = next((OWNERS[o] for o in sorted(owners) if o in OWNERS), facts.kind)
    if entries and owners == {""} and client.try_json("/health", from_root=True) == {"status": "ok"}:
        facts.kind = "mlx_lm.server"  # the one that names no owner
    props = client.try_json("/props", from_root=True)
    if isinstance(props, dict) and ("default_generation_settings" in props or "chat_template" in props):
        facts.kind, facts.props = "llama-server", props
        facts.version = visible(str(props.get("build_info", "")))[:100]
    elif facts.kind == "OpenAI-compatible server" or facts.kind == "Ollama":
        version = client.try_json("/api/version", from_root=True)
        if isinstance(version, dict) and "version" in version:
            facts.kind, facts.version = "Ollama", visible(str(version["version"]))[:100]
    return facts


def _context_of(entry: dict) -> int:
    """Tokens one request may use: vLLM's max_model_len, llama-server's meta.n_ctx (one slot's share)."""
    meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
    for value in (entry.get("max_model_len"), meta.get("n_ctx")):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def pick_model(facts: ServerFacts, wanted: str | None, preferred: str | None = None) -> str:
    """The model to use: `wanted` (from the command line), else `preferred` (a setting) if served,
    else the only one; ModelError naming the server's models otherwise."""
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


def chat_format(facts: ServerFacts, name: str, reasoning: bool | None) -> ChatFormat:
    """How `name` formats a chat: the template llama-server shows, else the hub cache's; whether it
    reasons (`reasoning`, else its template, else its name)."""
    props = facts.props
    if isinstance(props.get("chat_template"), str) and props["chat_template"]:
        template, bos, eos = props["chat_template"], _token(props.get("bos_token")), _token(props.get("eos_token"))
    else:
        template, bos, eos = hub_template(name)
    if reasoning is None:
        reasoning = is_reasoning_model(template, []) if template else bool(REASONING_NAMES.search(name))
    return ChatFormat(template, bos, eos, reasoning)


def hub_template(repo_id: str, cache_dir: str | None = None) -> tuple[str | None, str, str]:
    """The chat template of a hub model id from the local hub cache, if it is there (never downloads)."""
    if repo_id.count("/") != 1:
        return None, "", ""
    import json

    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(repo_id, "tokenizer_config.json", cache_dir=cache_dir)
        config = json.loads(Path(path).read_text(encoding="utf-8")) if isinstance(path, str) else {}
    except (OSError, ValueError):  # (the id may not be a valid repo id: HFValidationError is a ValueError)
        return None, "", ""
    if not isinstance(config, dict):
        return None, "", ""
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
    return (template if isinstance(template, str) else None), _token(config.get("bos_token")), _token(config.get("eos_token"))


def _token(value) -> str:
    """A special token's text: a string, or an object with `content` (tokenizer configs); else none."""
    value = value.get("content") if isinstance(value, dict) else value
    return value if isinstance(value, str) else ""


def describe(url: str, read_timeout: float = 5.0) -> tuple[ServerFacts | None, str]:
    """What the server at `url` is and serves, or None and why it cannot be reached; never raises."""
    try:
        client = ServerClient(url, read_timeout)
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
