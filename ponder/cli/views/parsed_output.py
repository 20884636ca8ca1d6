"""`ask --schema` / `--choice`: the constrained answer alone on stdout, once it is complete and checked.

stdout gets exactly one document (or the one choice) and a newline, nothing else, so `| jq` always
parses it. An answer cut off before its document was complete (out of tokens) is not printed there:
what arrived goes to stderr and the command fails (exit 1).
"""

from __future__ import annotations

from ponder.cli.views.code_output import AloneRenderer
from ponder.cli.views.render import PlainRenderer
from ponder.errors import PonderError
from ponder.events import Reply


class ParsedRenderer(AloneRenderer):
    def answer(self, text: str) -> None:
        pass  # printed at the end, whole and checked

    def finish(self, reply: Reply | None) -> None:
        PlainRenderer.reasoning_done(self, 0.0, 0)  # ends the reasoning's line
        if reply is None:  # interrupted: no document
            return
        if reply.parsed is not None:
            self._write(reply.answer.strip() + "\n")
            return
        self.error = incomplete(reply)
        if self.error is not None:
            self.err.write(f"ponder: what arrived: {self._err_safe(reply.answer.strip())}\n")
            self.err.flush()


def incomplete(reply: Reply | None) -> PonderError | None:
    """The error of a constrained reply whose answer began but did not complete its document, else None
    (no answer at all is `ask`'s "no answer", exit 3)."""
    if reply is None or reply.parsed is not None or not reply.answer.strip():
        return None
    return PonderError(f"the answer ended before its document was complete (finish_reason: {reply.finish_reason})",
                       hint="raise --max-tokens" if reply.finish_reason == "length" else None)
