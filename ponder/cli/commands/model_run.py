"""What every command that runs a model does: settings, input, loading, showing, closing lines."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace

from ponder.backends import LoadOptions, Model
from ponder.cli.commands.options import MAX_PARALLEL, Display, ModelChoice, Output, Sampling, Thinking
from ponder.cli.views.render import OutputFormat, ReasoningMode
from ponder.cli.views.terminal import Terminal
from ponder.events import AnswerDelta, GenerationParams, Message, ReasoningDelta, Reply, ReplyEvent

PROMPT_ROOM = 1024  # tokens of prompt a sample's context allows for, beside --max-tokens


@dataclass
class Run:
    term: Terminal
    mode: ReasoningMode
    output: OutputFormat
    params: GenerationParams
    invocation: object = None  # the command's typer context: where each option's value came from
    arrived: Arrived = field(default_factory=lambda: Arrived())  # the text of the reply being shown
    cache_warned: bool = False  # the prompt cache's folder was found unusable, and the user told

    @classmethod
    def start(cls, invocation=None, sampling: Sampling | None = None, thinking: Thinking | None = None,
              display: Display | None = None, output: Output | None = None, debug: bool = False) -> Run:
        """`invocation`: the command's typer context: where each option came from (a flag or the config
        file), and the Terminal that `ponder.cli.app.main` was handed, if any (the process's own otherwise)."""
        if debug:
            from ponder.errors import enable_debug

            enable_debug()
        return cls(
            term=(invocation and invocation.find_object(Terminal)) or Terminal.from_system(),
            mode=display.mode(invocation) if display else "collapse",
            output=output.format() if output else "text",
            params=GenerationParams(**(asdict(sampling) if sampling else {}),
                                    **(thinking.settings(invocation) if thinking else {})),
            invocation=invocation,
        )

    def needs_stdout(self) -> None:
        """Fail at once, before a model loads, where the shell closed stdout (`>&-`): the reply goes there."""
        if self.term.stdout_closed():
            from ponder.errors import PonderError

            raise PonderError("stdout is closed: there is nowhere to write the reply",
                              hint="redirect it instead: >reply.txt, or >/dev/null to discard it")

    def typed(self, name: str) -> bool:
        """Whether option `name` was given on the command line (not by the environment or config file)."""
        if self.invocation is None:
            return True
        source = self.invocation.get_parameter_source(name)
        return source is None or source.name in ("COMMANDLINE", "PROMPT")

    def prompt(self, argument: str | None) -> str:
        from ponder.cli.commands.user_input import user_prompt

        return user_prompt(argument, self.term)

    def load(self, choice: ModelChoice, sequences: int = 1, sequences_given: bool = False) -> Model:
        """The model `choice` names, loaded here or found on its server; its model_kind overrides whether it
        reasons. A local model is made ready to decode `sequences` at once (fewer where memory is short,
        unless `sequences_given`)."""
        from ponder.cli.commands import speculation
        from ponder.cli.commands.model_loading import connect_server, load_model, set_model_kind

        options = LoadOptions(context=choice.ctx, threads=choice.threads)
        if choice.server:
            speculation.check_server(self.params.speculate, choice.draft, self.typed)
            self.params = replace(self.params, speculate="off")  # (the server's business)
            return self._budget_noted(self._closed_at_end(connect_server(
                self.term, choice.server, choice.model, choice.backend, options, choice.timeout, choice.model_kind,
                self.typed)))
        options = replace(options, prompt_cache_bytes=self._prompt_cache_bytes(choice))
        # Each of several samples keeps room for its prompt and all it may generate, where memory allows.
        sample_context = self.params.max_tokens + PROMPT_ROOM
        sequences = min(sequences, MAX_PARALLEL)
        mode, note = speculation.local_mode(self.params.speculate, choice.draft, self.typed, sequences)
        if note:
            self.term.stderr.write(note + "\n")
        self.params = replace(self.params, speculate=mode)
        loaded = self._closed_at_end(load_model(self.term, choice.model, choice.backend,
                                                replace(options, sequences=sequences), sequences_given,
                                                sample_context, with_draft=mode == "draft", draft=choice.draft))
        set_model_kind(loaded, choice.model_kind)
        return self._budget_noted(loaded)

    def _budget_noted(self, model: Model) -> Model:
        """`model`; a --think-budget given for one that does not think is said to do nothing."""
        if self.params.think_budget is not None and not model.info.chat.reasoning and self.typed("think_budget"):
            from ponder.cli.views.safe_text import visible

            self.term.stderr.write(f"ponder: note: {visible(model.info.name)} does not think (a plain model):"
                                   " --think-budget does nothing\n")
        return model

    def _closed_at_end(self, model: Model) -> Model:
        """`model`, closed when the command ends however it ends (model_loading.close_model: a prompt-cache
        write finishes first, a Ctrl-C meanwhile then ends the command as interrupted)."""
        if hasattr(self.invocation, "call_on_close"):  # (a Run made without a command closes its models itself)
            from ponder.cli.commands.model_loading import close_model

            self.invocation.call_on_close(lambda: close_model(model))
        return model

    def _prompt_cache_bytes(self, choice: ModelChoice) -> int | None:
        """The prompt cache's cap; None (no cache) where its folder cannot hold one, said once on stderr:
        else it would silently never load nor save."""
        limit = choice.prompt_cache_bytes()
        if limit is None:
            return None
        from ponder.prompt_cache import cache_problem

        problem = cache_problem()
        if problem is None:
            return limit
        if not self.cache_warned:
            self.cache_warned = True
            self.term.stderr.write(f"ponder: warning: no prompt cache this run: {problem}\n")
        return None

    def show(self, model: Model, user_text: str, renderer=None) -> Reply | None:
        """Stream one reply to the user turn, rendered as this run's output asks (or by `renderer`).
        On a terminal, Enter while the model thinks ends its reasoning (AnswerNowKey). What arrived of a
        reply that Ctrl-C (or SIGTERM, SIGHUP) stopped stays in `arrived`."""
        from ponder.cli.views.answer_now import AnswerNowKey, until_answering
        from ponder.cli.views.render import make_renderer
        from ponder.cli.views.show_reply import show_reply
        from ponder.exchange import generate_reply

        # Only under the live view, which names the key (ask -x brings a view of its own).
        with AnswerNowKey(enabled=renderer is None and self.answer_key_wanted(model)) as key:
            events = generate_reply(model, [Message("user", user_text)], self.params,
                                    key.pressed if key.active else None)
            renderer = renderer or make_renderer(self.term, self.mode, model.info, self.output, key.active)
            return show_reply(self.arrived.record(until_answering(events, key)), renderer, self.term)

    def answer_key_wanted(self, model: Model) -> bool:
        """Whether Enter can end the reasoning: a live view, and a model whose reasoning ponder can end."""
        return self.term.stdout_is_tty and self.output == "text" and model.info.reasoning_end == "ponder"

    def samples(self, model: Model, user_text: str, n: int, on_reply=None, concurrency: int | None = None,
                on_event=None, settle=None) -> list[Reply | None]:
        """`n` independent samples, unshown (seeds step by one from --seed); see ponder.samples.draw."""
        from ponder.samples import draw

        return draw(model, [Message("user", user_text)], self.params, n, on_reply, concurrency, on_event, settle)

    def log(self, model: Model, user_text: str, reply: Reply | None) -> None:
        """Keep a one-shot in the history database; a history problem only warns."""
        if reply is not None:
            self._keep(model, user_text, lambda chat: chat.replied(reply))

    def log_stopped(self, model: Model, user_text: str) -> None:
        """Keep what arrived of a one-shot that Ctrl-C (or SIGTERM, SIGHUP) stopped, marked interrupted."""
        self._keep(model, user_text, lambda chat: chat.interrupted(self.arrived.answer, self.arrived.reasoning))

    def _keep(self, model: Model, user_text: str, add_reply) -> None:
        import sqlite3

        from ponder.conversation import Chat
        from ponder.errors import PonderError
        from ponder.history import History, Turn

        try:
            chat = Chat(History(), "ask")
        except (PonderError, OSError, sqlite3.Error) as exc:
            print(f"ponder: warning: not logged to the history: {exc}", file=self.term.stderr)
            return
        chat.use(model)
        if not (chat.add(Turn("user", user_text)) and add_reply(chat)):
            print(f"ponder: warning: not logged to the history: {chat.history_error}", file=self.term.stderr)
        if chat.history is not None:
            chat.history.close()

    def report(self, reply: Reply | None, stats: bool, logged: bool = False) -> None:
        """The closing lines; a reply the backend broke off then fails the command (exit 1)."""
        from ponder.cli.views.show_reply import report

        report(reply, stats, self.term.stderr)
        if reply is not None and reply.error:
            from ponder.errors import BackendError

            raise BackendError(reply.error, hint="what arrived is kept in the history" if logged else None)


class Arrived:
    """The reasoning and answer text of a reply as its events pass by: what to keep of one stopped early."""

    def __init__(self) -> None:
        self._parts: dict[type, list[str]] = {ReasoningDelta: [], AnswerDelta: []}

    @property
    def reasoning(self) -> str:
        return "".join(self._parts[ReasoningDelta])

    @property
    def answer(self) -> str:
        return "".join(self._parts[AnswerDelta])

    def record(self, events: Iterator[ReplyEvent]) -> Iterator[ReplyEvent]:
        self._parts = {ReasoningDelta: [], AnswerDelta: []}
        try:
            for event in events:
                if type(event) in self._parts:
                    self._parts[type(event)].append(event.text)
                yield event
        finally:
            events.close()  # (show_reply closes this to stop the generation: the stop reaches the model)
