"""JSON text that is safe wherever it lands: on a terminal, or in a file someone `cat`s."""

from __future__ import annotations

import json
import re
from typing import Any

# What json.dumps(ensure_ascii=False) leaves raw though a terminal would obey it (DEL, C1 controls such as
# the 8-bit CSI U+009B, bidi overrides), or no UTF-8 stream can carry (lone surrogates). It escapes C0 itself.
_RAW_IN_JSON = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def dumps(payload: Any, indent: int | None = None, **options: Any) -> str:
    """JSON with text readable as written (no ASCII escapes for ordinary Unicode) that is safe to print
    on a terminal. These characters occur only inside strings, where \\uXXXX means the same."""
    text = json.dumps(payload, ensure_ascii=False, indent=indent, **options)
    return _RAW_IN_JSON.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
