"""Text from a model, a server or the history is data: before it reaches a terminal, every
character that would steer the terminal instead of being shown is made visible.

An escape sequence is harmless once its introducer is: ESC[?1049h (the alternate screen) shows as
`^[[?1049h`, an OSC title or clipboard write as `^[]0;title^G`, since all that follows the ESC is
printable. So one rule covers CSI, OSC (titles, OSC 8 links, OSC 52 clipboard), DCS and the rest:
- C0 controls and DEL in caret notation (`^[`, `^G`, `^H`, `^?`), as `cat -v` and less show them;
  a lone CR (which would let later text overwrite what was shown) as `^M`. Newline, tab and CR LF stay.
- C1 controls (U+0080..U+009F: the 8-bit CSI U+009B, OSC U+009D, ...) as `<U+009B>`.
- Bidi embeddings, overrides and isolates (U+202A..U+202E, U+2066..U+2069) as `<U+202E>`: they
  reorder what is shown so it reads unlike what is there ("Trojan source"). The marks LRM, RLM and
  ALM stay, as ordinary right-to-left text uses them; ZWJ stays, as emoji sequences do.
- Lone surrogates (undecodable bytes smuggled into a str) as `<U+DC80>`: no terminal can be sent them.
They are made visible, not dropped, so that what is shown says what is there.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile("[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]|\r(?!\n)")


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return "^" + chr(code + 0x40)
    if code == 0x7F:
        return "^?"
    return f"<U+{code:04X}>"


def visible(text: str) -> str:
    """`text` with every control character in a visible, inert form; ordinary text unchanged."""
    return _UNSAFE.sub(_shown, text)
