"""Chats longer than the context: the oldest whole turns left out of what the model sees (on_full drop),
a summary the model writes in their place (/compact, on_full compact), or today's refusal (refuse). The
arithmetic alone first, then the real chat REPL on the tiny R1 (llama.cpp, MLX, llama-server)."""

from __future__ import annotations

import re

import pytest

from ponder.context_fit import estimated_tokens, fitting_start, reply_room, summary_room, turn_starts
from ponder.events import GenerationParams, Message
from tests.support.cli import piped_repl, ponder_env, run_ponder

# --- the arithmetic, without a model -------------------------------------------------------------


def test_room_for_a_reply():
    # A reasoning model without a budget: a quarter of the context, at most 2,048 tokens.
    assert reply_room(32768, 32768, None, reasoning=True) == 2048
    assert reply_room(2048, 32768, None, reasoning=True) == 512
    # A think budget asks for itself and an answer (up to 1,024, or an eighth of the context).
    assert reply_room(32768, 32768, 300, reasoning=True) == 300 + 1024
    assert reply_room(4096, 32768, 0, reasoning=True) == 512  # --no-think: the answer alone
    # A plain model: the answer alone.
    assert reply_room(32768, 32768, None, reasoning=False) == 1024
    assert reply_room(512, 32768, None, reasoning=False) == 64
    # Never more than the reply may be, nor half the context.
    assert reply_room(32768, 100, None, reasoning=True) == 100
    assert reply_room(8192, 32768, 20000, reasoning=True) == 4096
    assert reply_room(8, 32768, None, reasoning=True) == 2
    assert summary_room(32768, 32768) == 1024 and summary_room(512, 32768) == 64 and summary_room(512, 10) == 10
    assert summary_room(0, 32768) == 1024  # a server that does not say its context


def test_only_whole_turns_are_left_out():
    roles = ["system", "user", "assistant", "user", "assistant", "assistant", "user", "assistant", "user"]
    assert turn_starts(roles, 1, 8) == [1, 3, 6, 8]  # each user message; the new message (8) last
    assert turn_starts(roles, 3, 8) == [3, 6, 8]
    assert turn_starts(roles, 8, 8) == [8]


def _tokens(sizes: list[int], new: int):
    """A prompt of whole turns of `sizes` tokens, then the new message: its tokens from each start, and the
    starts asked for (a prompt is counted once each)."""
    asked = []

    def tokens(start: int) -> int:
        asked.append(start)
        return sum(sizes[start:]) + new

    return tokens, asked


def test_what_fits_is_kept_whole():
    tokens, asked = _tokens([100, 100, 100], new=50)
    assert fitting_start([0, 1, 2, 3], tokens, context=1000, room=200) == 0
    assert asked == [0]  # one count when it fits


def test_when_it_no_longer_fits_half_the_space_is_freed():
    """Leaving out turns changes the prompt's beginning, which the model then processes afresh: enough goes
    that the conversation fills at most half its space, so the next turns add to a prompt that stays put."""
    sizes = [100] * 9
    tokens, asked = _tokens(sizes, new=50)
    # space 1000 - 100 = 900; 950 does not fit; at most 450: the last 4 turns and the new message.
    assert fitting_start(list(range(10)), tokens, context=1000, room=100) == 5
    assert len(asked) == len(set(asked)) <= 6  # a binary search, each start counted once


def test_without_half_the_least_that_fits_and_none_when_the_message_alone_has_no_room():
    tokens, _ = _tokens([100, 300], new=400)
    # space 900 - 100 = 800: 800 fits as it is
    assert fitting_start([0, 1, 2], tokens, context=900, room=100) == 0
    # space 750: half (375) holds not even the new message; at most 750: from the second turn (700)
    assert fitting_start([0, 1, 2], tokens, context=850, room=100) == 1
    assert fitting_start([0, 1, 2], tokens, context=450, room=100) is None  # 400 + 100 > 450


def test_estimates_are_generous_against_the_real_tokenizer(tiny_r1, smollm2):
    """Where a server does not tokenize, ponder estimates: never fewer tokens than the model's tokenizer
    counts (DeepSeek-R1's real vocabulary, and SmolLM2's) on ordinary text: prose, numbers, code, URLs,
    CJK, Thai, Cyrillic, emoji. (Base64 defeats it: the server's counts and refusals correct that.)"""
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel

    texts = ["The quick brown fox jumps over the lazy dog. " * 20, "3.14159265358979 + 2718281828 = 5859874482",
             "def f(x):\n    return [i ** 2 for i in range(x) if i % 3]\n" * 5, "日本語の文章を数える。" * 10,
             "Ünïcödé ñ ß ∑ ∫ → 😀 " * 10, "😀🎉🦀" * 10, "ก่อนหน้านี้เราคุยกันเรื่อง" * 5, "Привет, как дела? " * 10,
             "a b c d e f g h i j k l m n o p " * 5, "https://example.com/path/to/resource?query=value&x=y#top " * 4,
             "Strengths: xylophonist antidisestablishmentarianism pneumonoultramicroscopic zygomorphic " * 5]
    for path in (tiny_r1, smollm2):
        model = LlamaCppModel(path, LoadOptions(context=512))
        try:
            for text in texts:
                assert estimated_tokens(text) >= len(model.tokenize(text)), (path, text[:20])
            messages = [Message("user", text) for text in texts]
            from ponder.exchange import model_prompt

            assert estimated_tokens(messages) >= len(model.tokenize(model_prompt(model, messages)))
        finally:
            model.close()


# --- the chat REPL on a real model ------------------------------------------------------------------

# A message of about 50 tokens (the tiny model's replies to it are short: what goes back is mostly the message).
FILLER = ("Note {}: the quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill,"
          " and the old farmer counts his sheep twice before the sun goes down behind the hills.")


def _recording(model):
    """Each prompt `model` is asked to reply to, as token ids: the prompt text of its first request (a
    continuation's, where thinking is off), not the continuations that end a reasoning which loops."""
    from ponder.events import Continuation

    sent = []
    real_stream = model.stream

    def stream(prompt, params, cancel=None):
        if not isinstance(prompt, Continuation):
            sent.append(model.tokenize(prompt))
        elif not prompt.ids:
            sent.append(model.tokenize(prompt.prompt))
        return real_stream(prompt, params, cancel)

    model.stream = stream
    return sent


def _chat(model, lines: list[str], history_path, on_full: str = "drop", max_tokens: int = 48):
    from ponder.history import History

    repl, term = piped_repl(model, ("\n".join(lines) + "\n").encode(),
                            GenerationParams(temperature=0, max_tokens=max_tokens))
    repl.chat.history = History(history_path)
    repl.chat.on_full = on_full
    repl.loop()
    return repl, term.stdout.getvalue(), term.stderr.getvalue()  # piped: the answers; ponder's own notes and errors


def flat(text: str) -> str:
    """`text` with its runs of white space as one space (a summary shown wraps at 80 columns)."""
    return " ".join(text.split())


def _stored(path, conversation_id):
    from ponder.history import History

    store = History(path)
    try:
        return store.load(conversation_id)
    finally:
        store.close()


def _prompt(model, turns) -> list[int]:
    from ponder.exchange import model_prompt

    return model.tokenize(model_prompt(model, [Message(t.role, t.content) for t in turns]))


@pytest.fixture
def tiny_512(tiny_r1):
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel

    model = LlamaCppModel(tiny_r1, LoadOptions(context=512))
    yield model
    model.close()


@pytest.fixture(params=["llama.cpp", "mlx"])
def tiny_512_each(request, tiny_r1):
    """The tiny R1 with a context of 512 on each local backend."""
    from ponder.backends.base import LoadOptions

    if request.param == "mlx":
        from ponder.backends.mlx import MlxModel

        model = MlxModel(request.getfixturevalue("tiny_r1_mlx"), LoadOptions(context=512))
    else:
        from ponder.backends.llamacpp import LlamaCppModel

        model = LlamaCppModel(tiny_r1, LoadOptions(context=512))
    yield model
    model.close()


def test_a_chat_goes_on_past_its_context(tiny_512_each, tmp_path):
    model = tiny_512_each
    sent = _recording(model)
    questions = [FILLER.format(i) for i in range(10)]
    repl, out, said = _chat(model, questions, tmp_path / "history.db")
    assert repl.failed is None, said

    # Every turn answered, every turn kept, in order.
    stored = _stored(tmp_path / "history.db", repl.chat.conversation.id)
    assert [t.role for t in stored.turns] == ["user", "assistant"] * 10
    assert [t.content for t in stored.turns[::2]] == questions
    assert all(t.finish_reason in ("stop", "length") for t in stored.turns[1::2])

    # The oldest turns left out, said once each time; each prompt leaves the reply its room.
    notes = [line.removeprefix("ponder: ") for line in said.splitlines() if line.startswith("ponder: note: ")]
    assert notes and all(line.endswith("oldest turns no longer fit and are left out") for line in notes), said
    assert "note" not in out and 1 <= len(notes) < 4  # half the space freed each time, not a turn at every message
    left = sum(int(line.split()[2]) for line in notes)
    assert repl.chat.left_out() == left and repl.chat.seen_from == 2 * left
    room = repl.chat.room(repl.run.params)
    assert room == 48 and all(len(ids) + room <= 512 for ids in sent)
    # The last prompt is exactly what the model now sees, the left-out turns not in it.
    assert sent[-1] == _prompt(model, repl.chat.conversation.turns[2 * left:-1])
    # Between the drops the prompt only grows at its end: the cached prefix holds.
    drops = {i for i, (a, b) in enumerate(zip(sent, sent[1:]), 1) if b[: len(a) - 2] != a[:-2]}
    assert len(drops) == len(notes)

    # The same view after `chat --continue`.
    from ponder.conversation import Chat
    from ponder.history import History

    resumed = Chat(History(tmp_path / "history.db"), "chat")
    resumed.resume(None, last=True)
    resumed.use(model)
    assert resumed.seen_from == repl.chat.seen_from and resumed.left_out() == left


def test_a_message_that_alone_has_no_room_is_refused_and_the_chat_goes_on(tiny_512, tmp_path):
    long_message = "Please read this long note carefully. " * 70  # 492 tokens: the context holds it, not a reply
    repl, out, said = _chat(tiny_512, ["What is 2+2?", long_message, "What is 12*7?"], tmp_path / "history.db")
    # Piped: on stderr, one line naming the message's line (there is no input line to give it back to).
    assert re.search(r"(?m)^ponder: error: input line 2: the message makes a prompt of 49\d tokens, which with room"
                     r" for a reply \(48 tokens\) does not fit the context of 512; the chat goes on without it\.$",
                     said), said
    assert "/clear" not in said  # /clear would not help: the message alone has no room
    assert repl.failed == 2  # piped chat exits with it, as before
    assert [t.content for t in repl.chat.conversation.turns[::2]] == ["What is 2+2?", "What is 12*7?"]
    assert repl.chat.seen_from == 0  # nothing left out for a message that was not sent


def test_on_full_refuse_is_the_old_refusal(tiny_r1, tmp_path):
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel

    model = LlamaCppModel(tiny_r1, LoadOptions(context=256))
    try:
        lines = ["/set on_full bogus", "/set on_full refuse"] + [FILLER.format(i) for i in range(6)]
        repl, out, said = _chat(model, lines, tmp_path / "history.db", on_full="drop", max_tokens=32)
    finally:
        model.close()
    assert "ponder: error: input line 1: on_full must be one of drop, compact, refuse, not 'bogus'" in said
    assert "on_full = refuse" in said and repl.chat.on_full == "refuse"
    assert "but the context holds 256; the chat goes on without it; /clear starts a new conversation." in said, said
    assert "note:" not in said and repl.chat.seen_from == 0 and repl.failed == 2


def test_compact_puts_a_summary_in_place_of_the_earlier_turns(tiny_r1, tmp_path):
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel
    from ponder.conversation import COMPACT_REQUEST, SUMMARY, Chat
    from ponder.history import History

    model = LlamaCppModel(tiny_r1, LoadOptions(context=1024))
    sent = _recording(model)
    try:
        questions = [FILLER.format(1), "What is 12*7?", FILLER.format(2)]
        repl, out, said = _chat(model, ["/compact", *questions, "/compact", "What is 2+2?"], tmp_path / "history.db")
        assert "nothing to compact: the model sees no earlier turn" in said
        assert "summarising the 3 earlier turns…" in said, said
        turns = repl.chat.conversation.turns
        before = _prompt(model, turns[:6] + turns[8:9])  # what the model would have seen without the summary
        # The summary request: the conversation, then the request (without thinking: its prompt text).
        assert sent[3] == _prompt(model, turns[:7])
        # After: one earlier exchange (the request, the summary) where the three turns were.
        assert sent[4] == _prompt(model, turns[6:9]) and len(sent[4]) < len(before)
        assert f"(the prompt: {len(_prompt(model, turns[:6]))} → {len(_prompt(model, turns[6:8]))} tokens)" in said

        stored = _stored(tmp_path / "history.db", repl.chat.conversation.id)
        assert [(t.role, t.content) for t in stored.turns[:6]] == [(t.role, t.content) for t in turns[:6]]
        assert [t.content for t in stored.turns[::2]] == [*questions, COMPACT_REQUEST, "What is 2+2?"]
        assert stored.turns[7].finish_reason == SUMMARY and stored.turns[7].content.strip()
        assert flat(stored.turns[7].content) in flat(out)  # the summary shown as written (/compact's reply)

        resumed = Chat(History(tmp_path / "history.db"), "chat")  # `chat --continue`: the compacted view
        resumed.resume(None, last=True)
        resumed.use(model)
        assert [t.content for t in resumed.seen()] == [t.content for t in turns[6:]]
    finally:
        model.close()


def test_on_full_compact_summarises_to_make_room(tiny_512, tmp_path):
    from ponder.conversation import COMPACT_REQUEST, SUMMARY

    questions = [FILLER.format(i) for i in range(10)]
    repl, out, said = _chat(tiny_512, questions, tmp_path / "history.db", on_full="compact")
    assert repl.failed is None, said
    assert "earlier turns to make room…" in said and "note: " not in said, said
    stored = _stored(tmp_path / "history.db", repl.chat.conversation.id)
    asked = [t.content for t in stored.turns if t.role == "user"]
    assert [q for q in asked if q != COMPACT_REQUEST] == questions  # every message kept, in order
    at = max(i for i, t in enumerate(stored.turns) if t.finish_reason == SUMMARY)
    assert stored.turns[at - 1].content == COMPACT_REQUEST and stored.turns[at + 1].role == "user"
    assert flat(stored.turns[at].content) not in flat(out)  # a piped chat's stdout is for answers: unshown
    assert repl.chat.seen_from == at - 1 and repl.chat.left_out() == 0


def test_the_flag_and_the_config_file(tiny_r1, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('on_full = "refuse"\n')
    env = ponder_env(PONDER_DATA_DIR=str(tmp_path / "data"), PONDER_CONFIG=str(config),
                     PONDER_CACHE_DIR=str(tmp_path / "cache"))
    messages = "".join(f"{FILLER.format(i)}\n" for i in range(6)).encode()
    args = ("chat", "--model", tiny_r1, "--ctx", "256", "--temperature", "0", "--max-tokens", "32")
    refused = run_ponder(*args, stdin=messages, env=env)
    assert refused.returncode == 2 and "/clear starts a new conversation." in refused.stderr.decode(), refused
    dropped = run_ponder(*args, "--on-full", "drop", stdin=messages, env=env)
    # (3: the tiny model's last answer to such a message may be empty, which piped chat reports; not 2)
    assert dropped.returncode in (0, 3) and "ponder: note: " in dropped.stderr.decode(), dropped
    assert "no longer fit" in dropped.stderr.decode() and b"no longer fit" not in dropped.stdout
    assert b"Traceback" not in dropped.stderr
    bad = run_ponder(*args, "--on-full", "never", env=env)
    assert bad.returncode == 2 and b"Invalid value for '--on-full'" in bad.stderr


# --- a server, which does not tokenize for ponder ---------------------------------------------------


@pytest.fixture(scope="module")
def server_512(tiny_r1):
    """llama-server on the tiny R1 with one slot of 512 tokens (ponder renders the prompt, raw completions)."""
    from tests.support.servers import llama_server

    with llama_server(tiny_r1, defaults=("-c", "512", "-np", "1")) as server:
        yield server


def test_a_chat_with_a_server_estimates_then_learns_its_counts(server_512, tiny_512, tmp_path):
    from ponder.backends.server import connect

    model = connect(server_512.url)
    sent = _recording_texts(model)
    try:
        questions = [FILLER.format(i) for i in range(10)]
        repl, out, said = _chat(model, questions, tmp_path / "history.db")
    finally:
        model.close()
    assert repl.failed is None and repl.chat.estimated, said  # no refusal: the estimates kept the room
    assert "oldest turns no longer fit and are left out" in said, said
    assert 0.2 < repl.chat.scale < 1.1  # the server's counts made the generous estimates closer
    real = [len(tiny_512.tokenize(text)) for text in sent]  # the same tokenizer, run here
    assert all(count + 48 <= 512 for count in real)
    stored = _stored(tmp_path / "history.db", repl.chat.conversation.id)
    assert [t.content for t in stored.turns[::2]] == questions


def test_a_server_that_does_not_say_its_context_refuses_and_room_is_made(server_512, tmp_path):
    """No context told (0): nothing to fit against; the server's refusal (ContextOverflow) leaves out the
    older half of the turns, and the message is sent again."""
    from dataclasses import replace

    from ponder.backends.server import connect

    model = connect(server_512.url)
    model.info = replace(model.info, context=0)
    sent = _recording_texts(model)
    try:
        questions = [FILLER.format(i) for i in range(12)]  # past 512 tokens at the 11th
        repl, out, said = _chat(model, questions, tmp_path / "history.db")
    finally:
        model.close()
    assert repl.failed is None, said
    notes = [line for line in said.splitlines() if line.startswith("ponder: note: ")]
    assert notes and len(sent) == len(questions) + len(notes), said  # each refusal: room made, sent again
    stored = _stored(tmp_path / "history.db", repl.chat.conversation.id)
    assert [t.content for t in stored.turns[::2]] == questions


def _recording_texts(model):
    """As _recording, for a model that does not tokenize: the prompt texts."""
    from ponder.events import Continuation

    sent = []
    real_stream = model.stream

    def stream(prompt, params, cancel=None):
        if not isinstance(prompt, Continuation) or not prompt.ids:
            sent.append(prompt.prompt if isinstance(prompt, Continuation) else prompt)
        return real_stream(prompt, params, cancel)

    model.stream = stream
    return sent


# --- on a terminal -----------------------------------------------------------------------------------


def test_on_a_terminal_the_note_then_a_summary_written_live(tiny_r1, tmp_path):
    """In a real terminal (tmux): the note where turns are left out, then /compact showing the summary as the
    model writes it, and what it replaced."""
    from tests.support.cli import TmuxSession

    env = ponder_env(TERM="xterm-256color", PONDER_DATA_DIR=str(tmp_path / "data"),
                     PONDER_CACHE_DIR=str(tmp_path / "cache"))
    session = TmuxSession("chat", "--model", tiny_r1, "--ctx", "512", "--temperature", "0", "--max-tokens", "48",
                          env=env)
    try:
        session.wait_for(r"(?m)^>$", timeout=90)
        for i in range(10):
            start = len(session.screen())
            session.line(FILLER.format(i))
            session.wait_for(r"\n>$", after=start + 10)
        screen = session.screen()
        assert re.search(r"(?m)^note: the \d+ oldest turns no longer fit and are left out$", screen), screen
        session.line("/stats")  # (its words are found anywhere: a full screen scrolls, offsets into it move)
        session.wait_for(r"\(\d+\s+oldest\s+turns\s+left\s+out\)")  # (the line may wrap anywhere)
        session.line("/compact")
        stands = r"the summary stands for \d+ turns in what the model sees \(the prompt: \d+ → \d+ tokens\); the history"
        session.wait_for(r"summarising the \d+ earlier turns…\n[\s\S]+\n" + stands.replace(" ", r"\s+")
                         + r"\s+keeps them all\n>$")
        session.keys("C-d")
        session.wait_for("EXIT=0")
    finally:
        session.close()
