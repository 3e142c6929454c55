"""Text the commands print to the console, made safe: names can hold any character but a
console line must stay one line that says what the tool says."""

from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPED_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs"}
"""Controls (CR, LF, ESC...), format characters (right-to-left overrides), line and paragraph
separators, and lone surrogates (the bytes of a name that is not UTF-8)."""


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a non-UTF-8 name (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: object) -> str:
    """``text`` (a file name, or a message naming files) for one console line: control and
    format characters written as escapes (``\\r``, ``\\n``, ``\\x1b``, ``\\u202e``), so a
    name cannot start a line of its own, forge a verdict line or move the cursor. The one
    rule for every name the ``bta-core`` commands print; files and JSON keep names as they are.
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(
        _escape(ch) if unicodedata.category(ch) in _ESCAPED_CATEGORIES else ch for ch in text
    )
