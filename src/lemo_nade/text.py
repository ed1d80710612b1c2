"""Text that came from a candidate or an LLM (errors, log tails, notes, code, a measured
label) made safe to show: it is data, never markup or a terminal command (issue 16,
point 4). Each output format adds its own layer on top of :func:`plain`: rich prints it
as a ``Text`` (never parsed as markup), HTML through ``html.escape``, Markdown through
:func:`md_cell`, matplotlib through :func:`no_math`; JSON needs nothing (``json.dumps``
escapes every control character).

Pure: the standard library only.
"""

from __future__ import annotations

import re

# Terminal sequences, removed whole (they are formatting, cursor moves, titles or links,
# never content): CSI (ESC [ or 8-bit 0x9b, then parameters and a final byte); OSC, DCS,
# SOS, PM, APC (ESC ] P X ^ _ or their 8-bit forms) up to BEL or ST, unterminated ones
# are left to the control-character pass; the other ESC sequences (charset, keypad, RIS).
_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)"
    r"|\x1b[ -/]*[0-~]"
)
# What is left that a terminal or a viewer would act on, shown as a visible escape: C0
# controls but newline and tab, DEL, C1 controls, the bidi controls that reorder what
# follows (U+202E shows "txt.exe" as "exe.txt"), and the Unicode line separators.
_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]"
)
_NAMED = {"\r": "\\r", "\x1b": "\\e"}
# Markdown: a table cell ends at "|"; "<" opens raw HTML, "[" a link or image, "&" an
# entity; "\" escapes itself. A code span ("`") is left: nothing in it is live, and GFM
# still reads "\|" there as a "|" that does not end the cell.
_MD_SPECIAL = re.compile(r"([\\|<>\[\]&])")


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def plain(text: str) -> str:
    """``text`` with terminal sequences removed and every other control character
    (including ``\\r``, backspace, bell, C1 and bidi overrides) written as a visible
    escape such as ``\\x08``; newlines and tabs stay, ``\\r\\n`` becomes a newline.
    Markup (``[bold]``, ``<script>``) is left as it is: escaping it is the output
    format's job."""
    text = _SEQUENCE.sub("", text.replace("\r\n", "\n"))
    return _CONTROL.sub(_visible, text)


def one_line(text: str) -> str:
    """:func:`plain` with every run of whitespace that holds a line break (or a tab)
    turned into one space, for a cell or a progress line."""
    return re.sub(r"[ \t]*[\n\t][\s]*", " ", plain(text)).strip()


def md_cell(text: str) -> str:
    """``text`` as one Markdown table cell or inline text: one line, and the characters
    that would end the cell or open HTML or a link backslash-escaped (what CommonMark
    allows before any ASCII punctuation), so it renders as written."""
    return _MD_SPECIAL.sub(r"\\\1", one_line(text))


def no_math(text: str) -> str:
    """``text`` for a matplotlib label: :func:`plain`, and every ``$`` escaped so that
    mathtext never parses it (``$\\frac{$`` would fail when the figure is drawn)."""
    return plain(text).replace("$", "\\$")


def fence(text: str, lang: str = "python") -> str:
    """``text`` in a Markdown code fence it cannot close early (for a prompt)."""
    ticks = "```"
    while ticks in text:  # a fence the text cannot close early
        ticks += "`"
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"
