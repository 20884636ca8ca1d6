"""The server backend's pure parts: how each server convention's text becomes reasoning and answer,
the key kept out of messages, retry timing, request adaptation, and the cancel hook."""

from __future__ import annotations

import threading

import pytest

from ponder.backends.server_adapt import adaptation as _adaptation
from ponder.backends.server_http import ServerClient, ServerRefused, _retry_after, shown_url
from ponder.backends.server_stream import Choice as _Choice, texts as _texts
from ponder.errors import UsageError
from ponder.events import AnswerDelta, BackendStats, Finished, ReasoningDelta, ReasoningDone, Reply, TextDelta
from ponder.exchange import split_reply
from ponder.settings import check
from ponder.threads import Cancel

STATS = BackendStats(prompt_tokens=5, generated_tokens=0, time_to_first_token_s=0.1, decode_tokens_per_s=0,
                     total_s=1.0)


def replay(events, starts_in_reasoning=True, stats=STATS):
    out = list(split_reply(iter([*events, Finished("stop", stats)]), starts_in_reasoning, 0.0))
    return out, out[-1]


def stream_of(chunks):
    """TextDeltas as the server backend makes them from streamed choices."""
    choice, deltas = _Choice(), []
    for raw in chunks:
        deltas += choice.deltas(*_texts(raw))
    return deltas


def test_reasoning_content_then_content_is_reasoning_then_answer():
    deltas = stream_of([{"delta": {"role": "assistant"}}, {"delta": {"reasoning_content": "Okay, 12*7."}},
                        {"delta": {"reasoning_content": " Yes."}}, {"delta": {"content": "84"}}])
    events, reply = replay(deltas)
    assert reply.reasoning == "Okay, 12*7. Yes." and reply.answer == "84"
    assert [type(e) for e in events[:-1]] == [ReasoningDelta, ReasoningDelta, ReasoningDone, AnswerDelta]
    assert reply.stats.reasoning_tokens == 2 and reply.stats.answer_tokens == 1


def test_the_reasoning_field_of_vllm_ollama_and_mlx_lm():
    _, reply = replay(stream_of([{"delta": {"reasoning": "think"}}, {"delta": {"content": "</think> stays"}}]))
    assert reply.reasoning == "think" and reply.answer == "</think> stays"  # parsed: the content is all answer


def test_raw_content_is_split_by_ponder_with_or_without_the_opening_tag():
    for first in ("<think>\nOkay", "Okay"):
        _, reply = replay(stream_of([{"delta": {"content": first}}, {"delta": {"content": " so.\n</think>\n\n84"}}]))
        assert reply.reasoning == "Okay so.\n" and reply.answer == "\n\n84"


def test_a_plain_model_behind_a_raw_server_keeps_its_whole_reply_as_the_answer():
    _, reply = replay(stream_of([{"delta": {"content": "Hello"}}, {"delta": {"content": " there."}}]),
                      starts_in_reasoning=False)
    assert reply.reasoning == "" and reply.answer == "Hello there."


def test_completions_text_is_raw():
    assert _texts({"index": 0, "text": "84", "finish_reason": None}) == ("", "84")


def test_a_servers_reasoning_token_count_wins_over_counting():
    stats = BackendStats(5, 10, 0.1, 50.0, 1.0, reasoning_tokens=7)
    _, reply = replay(stream_of([{"delta": {"reasoning": "a b c"}}, {"delta": {"content": "d"}}]), stats=stats)
    assert (reply.stats.reasoning_tokens, reply.stats.answer_tokens) == (7, 3)


def test_no_reasoning_done_for_a_reply_that_never_reasoned():
    events, reply = replay([TextDelta("Hi", 1, "answer")])
    assert not any(isinstance(e, ReasoningDone) for e in events) and reply.answer == "Hi"


def test_an_interrupted_reply_keeps_what_arrived_and_says_why():
    out = list(split_reply(iter([TextDelta("<think>so"), Finished("interrupted", STATS, error="cut")]), False, 0.0))
    reply = out[-1]
    assert isinstance(reply, Reply) and reply.finish_reason == "interrupted" and reply.error == "cut"
    assert reply.reasoning == "so"


def client_with_key(key: str) -> ServerClient:
    client = ServerClient("http://127.0.0.1:9/v1", environ={"PONDER_API_KEY": key})
    client.close()
    return client


def test_the_key_is_removed_from_what_a_server_says():
    key = "sk-live-0123456789abcdef"
    client = client_with_key(key)
    assert key not in client.redact(f"invalid key {key}!")
    assert "0123456789" not in client.redact("key sk-live-0123456789… is wrong")  # a partial echo
    assert client.redact("nothing secret") == "nothing secret"


def test_urls_lose_their_credentials_in_messages():
    assert shown_url("http://user:pw@host:8000/v1") == "http://host:8000/v1"
    assert shown_url("http://host/v1") == "http://host/v1"


class FakeResponse:
    def __init__(self, headers):
        self.headers = headers


def test_retry_after_in_seconds_or_as_a_date():
    assert _retry_after(FakeResponse({"retry-after": "2"})) == 2.0
    assert _retry_after(FakeResponse({})) is None
    assert _retry_after(FakeResponse({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0  # in the past
    assert _retry_after(FakeResponse({"retry-after": "soon"})) is None


def test_a_refused_optional_field_is_dropped_or_renamed_once():
    body = {"stream_options": {}, "max_tokens": 5, "seed": 1}
    assert _adaptation(ServerRefused("x", 400, "unknown field stream_options"), body) == {"stream_options": None}
    assert _adaptation(ServerRefused("x", 400, "use max_completion_tokens instead of max_tokens"), body) == \
        {"max_completion_tokens": True}
    assert _adaptation(ServerRefused("x", 500, "stream_options"), body) is None
    assert _adaptation(ServerRefused("x", 400, "model not found"), body) is None


def test_cancel_runs_its_callbacks_once_and_at_once_when_already_set():
    cancel, calls = Cancel(), []
    remove = cancel.on_set(lambda: calls.append("a"))
    cancel.on_set(lambda: calls.append("b"))()  # removed before the flag is set
    cancel.set()
    cancel.set()
    assert calls == ["a"] and cancel.is_set()
    cancel.on_set(lambda: calls.append("late"))
    assert calls == ["a", "late"]
    remove()  # harmless after the fact
    assert isinstance(cancel, threading.Event)


def test_the_server_setting_must_be_a_url():
    assert check("server", "http://h:8000/v1") == "http://h:8000/v1"
    with pytest.raises(UsageError, match="http://"):
        check("server", "h:8000")
    assert check("model_kind", "plain") == "plain"
    with pytest.raises(UsageError):
        check("timeout", 0.0)


def test_a_hub_models_template_comes_from_the_local_hub_cache(tmp_path, monkeypatch):
    from ponder.backends.server_facts import ServerFacts, chat_format as _chat_format

    snapshot = tmp_path / "models--deepseek-ai--R1-Distill" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (tmp_path / "models--deepseek-ai--R1-Distill" / "refs").mkdir()
    (tmp_path / "models--deepseek-ai--R1-Distill" / "refs" / "main").write_text("abc123")
    template = "{% for m in messages %}{{ m.content }}{% endfor %}</think>"
    (snapshot / "tokenizer_config.json").write_text(
        f'{{"chat_template": "{template}", "bos_token": {{"content": "<s>"}}, "eos_token": "</s>"}}')
    import ponder.backends.server_facts as server_facts

    real = server_facts.hub_template
    monkeypatch.setattr(server_facts, "hub_template", lambda repo: real(repo, cache_dir=str(tmp_path)))
    found = _chat_format(ServerFacts("http://h/v1", kind="vLLM"), "deepseek-ai/R1-Distill", None)
    missing = _chat_format(ServerFacts("http://h/v1", kind="vLLM"), "someone/plain-model", None)
    assert (found.template, found.bos_token, found.eos_token, found.reasoning) == (template, "<s>", "</s>", True)
    assert missing.template is None and not missing.reasoning  # no template, a name that does not reason


def test_vllm_bounds_the_reasoning_itself_on_its_chat_route():
    """Who can end a reasoning is one capability of the model (ModelInfo.reasoning_end): ponder where it
    renders the prompt, vLLM's chat route by a budget in the request, nobody on another chat route."""
    from dataclasses import replace

    from ponder.backends.base import ModelInfo
    from ponder.backends.server import ServerFacts, ServerModel
    from ponder.events import GenerationParams, Message
    from ponder.prompt import ChatFormat

    info = ModelInfo("r1", "http://h/v1", "server (vLLM)", 32768, 32768, ChatFormat(None, reasoning=True),
                     renders_prompt=False, native_budget=True)
    model = ServerModel(info, client_with_key("k" * 10), ServerFacts("http://h/v1", kind="vLLM"))
    _, body = model.request([Message("user", "hi")], GenerationParams(think_budget=256))
    assert info.reasoning_end == "server" and body["thinking_token_budget"] == 256
    model.info = replace(info, native_budget=False)
    _, body = model.request([Message("user", "hi")], GenerationParams(think_budget=256))
    assert model.info.reasoning_end is None and "thinking_token_budget" not in body
    assert replace(info, renders_prompt=True).reasoning_end == "ponder"
    assert replace(info, chat=ChatFormat(None, reasoning=False)).reasoning_end is None
