"""Untrusted Markdown: script-capable links are defanged outside code blocks; names are fully escaped."""
from __future__ import annotations

import pytest

from app.render import defang_links, escape_md


@pytest.mark.parametrize(
    "text",
    [
        "[x](javascript:alert(1))",
        "[x]( JavaScript:alert(1))",
        "[x](<javascript:alert(1)>)",
        "[x](vbscript:msgbox)",
        "[x](data:text/html;base64,PHNjcmlwdD4=)",
        "<javascript:alert(1)>",
        "[x][r]\n\n[r]: javascript:alert(1)",
    ],
)
def test_script_links_are_escaped(text: str) -> None:
    out = defang_links(text)
    assert out != text
    # No unescaped "[...](scheme:" or "<scheme:" remains.
    assert "](javascript" not in out.lower().replace("\\](", "")
    assert "\\" in out


def test_safe_links_and_code_blocks_untouched() -> None:
    text = "see [docs](https://example.org) and\n```md\n[x](javascript:alert(1))\n```\n"
    assert defang_links(text) == text


def test_text_after_a_code_block_is_still_checked() -> None:
    text = "```\ncode\n```\n[x](javascript:1)"
    assert defang_links(text).endswith("\\[x\\]\\(javascript:1)")


def test_escape_md() -> None:
    assert escape_md("**bob** [x](y) <b>") == "\\*\\*bob\\*\\* \\[x\\]\\(y\\) \\<b\\>"
    assert "\n" not in escape_md("a\nb")
