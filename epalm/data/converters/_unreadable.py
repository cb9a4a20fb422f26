"""Annotation files that cannot be read as they are: a Git LFS or git-annex placeholder in
place of the file, or text in another encoding than UTF-8. Each check returns what to tell the
user; the guess at an encoding is a hint in the message, never used to decode."""

from __future__ import annotations

import codecs
import os
import re
import shlex
import unicodedata
from collections.abc import Callable
from pathlib import Path

LFS_POINTER = b"version https://git-lfs.github.com/spec/"
POINTER_MAX = 1024  # both placeholders are tiny text files; a real annotation file is not


def placeholder_problem(path: Path) -> str | None:
    """What is wrong when ``path`` is a Git LFS pointer or a git-annex link instead of the file
    (a repository cloned without fetching its large files, whose parser errors would mislead)."""
    if path.is_symlink() and not path.exists() and "/annex/objects/" in os.readlink(path):
        return (
            f"{path}: a git-annex link whose content is not here; run `git annex get` on it "
            "in its repository, or download the real file"
        )
    if not path.is_file() or path.stat().st_size > POINTER_MAX:
        return None
    head = path.read_bytes()
    if head.startswith(LFS_POINTER):
        size = re.search(rb"^size (\d+)", head, re.MULTILINE)
        missing = f"{int(size.group(1)):,} bytes" if size else "the content"
        return (
            f"{path}: is a Git LFS pointer ({missing} of the real file not downloaded); run "
            "`git lfs pull` in its repository, or download the real file"
        )
    if head.startswith(b"/annex/objects/"):  # an unlocked git-annex file without its content
        return (
            f"{path}: is a git-annex pointer (the real file not downloaded); run `git annex get` "
            "on it in its repository, or download the real file"
        )
    return None


def _share(text: str, fits: Callable[[str], bool]) -> float:
    foreign = [c for c in text if not c.isascii()]
    return sum(map(fits, foreign)) / len(foreign) if foreign else 0.0


def _kana(c: str) -> bool:
    return "\u3040" <= c <= "\u30ff"


def _han(c: str) -> bool:  # with CJK punctuation and full-width forms
    return "\u4e00" <= c <= "\u9fff" or "\u3000" <= c <= "\u303f" or "\uff00" <= c <= "\uffef"


def _two_high_bytes(c: str, codec: str) -> bool:
    # what Korean and Chinese text is made of; accented Latin letters followed by ASCII letters
    # decode as Hangul or Han in CP949 and GB18030 too, but from one high byte
    return all(byte >= 0x80 for byte in c.encode(codec))


def _japanese(text: str) -> bool:  # Latin-1 text never decodes to kana: their bytes are controls
    return _share(text, _kana) >= 0.2 and _share(text, lambda c: _kana(c) or _han(c)) >= 0.9


def _korean(text: str) -> bool:
    return _share(text, lambda c: "\uac00" <= c <= "\ud7a3" and _two_high_bytes(c, "cp949")) >= 0.9


def _chinese(text: str) -> bool:
    return _share(text, lambda c: _han(c) and _two_high_bytes(c, "gb18030")) >= 0.9


def _western(text: str) -> bool:  # printable, and accented letters a minority of the letters
    foreign = [c for c in text if not c.isascii()]
    accented = sum(c.isalpha() for c in foreign)
    plain = sum(c.isalpha() for c in text if c.isascii())
    return all(unicodedata.category(c)[0] != "C" for c in foreign) and accented < plain


# (iconv name, what it is, whether the text decoded with it reads as that): the first that fits
# wins. Japanese text also decodes as CP949, Korean text as GB18030, Chinese and Korean as CP1252.
ENCODINGS: tuple[tuple[str, str, Callable[[str], bool]], ...] = (
    ("SHIFT_JIS", "Shift JIS (Japanese)", _japanese),
    ("CP949", "CP949 (Korean)", _korean),
    ("GB18030", "GB18030 (Chinese)", _chinese),
    ("CP1252", "Windows-1252 / Latin-1", _western),
)
GUESS_WINDOW = 1 << 16  # bytes judged from the first bad one: enough to tell, cheap on any file


def not_utf8_problem(path: Path) -> str:
    """Where ``path`` stops being UTF-8, and the encoding it seems to be in (a hint only)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        offset = err.start
    else:  # the stream failed on what the bytes decode: nothing better to point at
        return f"{path}: not UTF-8 text; re-encode it to UTF-8"
    line = data.count(b"\n", 0, offset) + 1
    guess = _guess_encoding(data, offset)
    looks = f"it looks like {guess[1]}" if guess else "its encoding could not be guessed"
    source = guess[0] if guess else "ITS-ENCODING"
    return (
        f"{path}: not UTF-8 text (byte 0x{data[offset]:02x} at offset {offset}, line {line}); "
        f"{looks}; re-encode it to UTF-8, e.g. `iconv -f {source} -t UTF-8 "
        f"{shlex.quote(str(path))} > {shlex.quote(str(path) + '.utf8')}`, and put that in its place"
    )


def _guess_encoding(data: bytes, offset: int) -> tuple[str, str] | None:
    """The encoding in which the bytes from ``offset`` decode and read as its script: a hint for
    the message, never used to decode."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "UTF-16", "UTF-16"
    window = data[offset : offset + GUESS_WINDOW]
    for codec, name, fits in ENCODINGS:
        try:  # not final: the window may cut a character in two
            text = codecs.getincrementaldecoder(codec)().decode(window, final=False)
        except UnicodeDecodeError:
            continue
        if fits(text):
            return codec, name
    return None
