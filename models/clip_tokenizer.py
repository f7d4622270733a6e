"""CLIP's byte-level BPE tokenizer, written from the algorithm, and the ViLD prompt templates.

References: OpenAI CLIP ``clip/simple_tokenizer.py`` and ``clip/clip.py:tokenize`` (the copy under
FOCUS ``third_party/CLIP``); FOCUS ``focus/modeling/clip_refiner/text_template.py`` (templates).

The merges file is not shipped (OpenAI's licence is theirs): pass the path of
``bpe_simple_vocab_16e6.txt.gz`` from the OpenAI CLIP repository (also inside the ``clip`` and
``open_clip_torch`` wheels). Format: gzip or plain UTF-8 text, a header line (``#version: 0.2``)
then one merge ``a b`` per line in rank order; CLIP uses the first 48,894 merges. The vocabulary is
the 256 byte symbols, the same with ``</w>``, one entry per merge, then ``<|startoftext|>`` and
``<|endoftext|>`` (49,406 and 49,407 with the full file; EOT is always the highest id, which the
text tower relies on to find it by argmax).

Text cleaning differs from the reference only where optional packages are missing:
- ``ftfy.fix_text`` is used when ``ftfy`` is installed. Otherwise a documented subset runs: NFC,
  curly quotes to straight ones (ftfy's ``uncurl_quotes``: U+02BC, U+2018-U+201B -> ``'`` and
  U+201C-U+201F -> ``"``; this maps the U+2019 in the FOCUS prompts, as ftfy does), Latin
  ligatures and full-width characters (ftfy's ``fix_latin_ligatures``/``fix_character_width``).
  ftfy's mojibake repair is not reproduced; the FOCUS prompts contain none.
- The split pattern uses ``\\p{L}``/``\\p{N}`` via the ``regex`` package when installed. Otherwise
  the two classes are built from ``unicodedata`` (general categories L* and N*) for stdlib ``re``:
  identical up to differences between the two packages' Unicode versions and ``\\s`` definitions
  (stdlib ``\\s`` also matches U+001C-U+001F).
"""

from __future__ import annotations

import gzip
import html
import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"
CLIP_NUM_MERGES = 49152 - 256 - 2  # the reference slices merges[1 : 49152 - 256 - 2 + 1]

# FOCUS uses the 14 ViLD templates (cfg TEXT_TEMPLATES "vild"), in this order.
VILD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

_SINGLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]")
_DOUBLE_QUOTES = re.compile("[\u201c-\u201f]")
_LIGATURES = re.compile("[\u0132\u0133\u01c4-\u01cc\u01f1-\u01f3\ufb00-\ufb06]")
_WIDE = re.compile("[\u3000\uff01-\uff5e\uffe0-\uffe6]")


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """Reversible map from the 256 byte values to printable unicode characters.

    Printable Latin-1 bytes map to themselves; the other 68 bytes (controls, space, ...) map to
    code points 256 upwards, so BPE never sees whitespace or control characters.
    """
    order = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    order += range(ord("®"), ord("ÿ") + 1)
    chars = [chr(b) for b in order]
    for b in range(256):
        if b not in order:
            order.append(b)
            chars.append(chr(256 + len(chars) - 188))  # 188 printable bytes precede
    # Insertion order (printable bytes first) is the order of the first 256 vocabulary ids.
    return dict(zip(order, chars, strict=True))


def _fix_text_fallback(text: str) -> str:
    text = _SINGLE_QUOTES.sub("'", text)
    text = _DOUBLE_QUOTES.sub('"', text)
    text = _LIGATURES.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
    text = _WIDE.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
    return unicodedata.normalize("NFC", text)


def basic_clean(text: str) -> str:
    try:
        import ftfy
    except ImportError:
        text = _fix_text_fallback(text)
    else:
        text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def whitespace_clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _class_ranges(prefix: str) -> str:
    """A character-class body: every code point whose general category starts with prefix."""
    parts: list[str] = []
    start = prev = -2
    # Planes 4-13 are unassigned and 15-16 private use: neither holds letters or numbers.
    for cp in (*range(0x40000), *range(0xE0000, 0xE1000)):
        if unicodedata.category(chr(cp)).startswith(prefix):
            if cp != prev + 1:
                if start >= 0:
                    parts.append(_range(start, prev))
                start = cp
            prev = cp
    parts.append(_range(start, prev))
    return "".join(parts)


def _range(a: int, b: int) -> str:
    return re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"


@lru_cache
def token_pattern(use_regex: bool | None = None) -> Any:
    """The reference split pattern; ``use_regex=None`` picks ``regex`` when it is installed."""
    specials = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
    if use_regex is None or use_regex:
        try:
            import regex
        except ImportError:
            if use_regex:
                raise
        else:
            return regex.compile(specials + r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", regex.IGNORECASE)
    letters, numbers = _class_ranges("L"), _class_ranges("N")
    return re.compile(
        specials + f"|[{letters}]+|[{numbers}]|[^\\s{letters}{numbers}]+", re.IGNORECASE
    )


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word[:-1], word[1:], strict=True))


def read_merges(path: str | Path, max_merges: int = CLIP_NUM_MERGES) -> list[tuple[str, str]]:
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    lines = raw.decode("utf-8").split("\n")[1 : 1 + max_merges]  # line 0 is the version header
    while lines and not lines[-1].strip():
        lines.pop()  # a short file's trailing newline (the full file is sliced before its end)
    merges = []
    for number, line in enumerate(lines, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: a merge line must be two symbols, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


class ClipTokenizer:
    """CLIP BPE tokenizer.

    Args:
        merges_path: ``bpe_simple_vocab_16e6.txt.gz`` (or a file in the same format).
        max_merges: how many merges to use (CLIP: 48,894).
        use_regex: force (True) or forbid (False) the ``regex`` package; None picks it if present.
    """

    def __init__(
        self,
        merges_path: str | Path,
        *,
        max_merges: int = CLIP_NUM_MERGES,
        use_regex: bool | None = None,
    ) -> None:
        merges = read_merges(merges_path, max_merges)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += [SOT_TEXT, EOT_TEXT]
        self.encoder = {token: i for i, token in enumerate(vocab)}  # later duplicates win, as ref
        self.decoder = dict(enumerate(vocab))
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}  # as the reference: last rank wins
        self.pattern = token_pattern(use_regex)
        self._cache: dict[str, str] = {SOT_TEXT: SOT_TEXT, EOT_TEXT: EOT_TEXT}

    @property
    def sot_token(self) -> int:
        return self.encoder[SOT_TEXT]

    @property
    def eot_token(self) -> int:
        return self.encoder[EOT_TEXT]

    @property
    def vocab_size(self) -> int:
        return len(self.decoder)

    def bpe(self, token: str) -> str:
        """Merge the symbols of one pre-token, lowest rank first; returns symbols joined by ' '."""
        if token in self._cache:
            return self._cache[token]
        word = (*token[:-1], token[-1] + "</w>")
        pairs = _pairs(word)
        while pairs:
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            pairs = _pairs(word) if len(word) > 1 else set()
        result = " ".join(word)
        self._cache[token] = result
        return result

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without SOT/EOT."""
        text = whitespace_clean(basic_clean(text)).lower()
        ids: list[int] = []
        for piece in self.pattern.findall(text):
            symbols = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self.bpe(symbols).split(" "))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")

    def tokenize(self, texts: str | Sequence[str], context_length: int = 77) -> torch.Tensor:
        """[N, context_length] int64: SOT, tokens, EOT, zero padding.

        Raises ValueError when a text does not fit (the reference raises too; it never truncates
        unless asked, and FOCUS never asks).
        """
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token, *self.encode(text), self.eot_token]
            if len(ids) > context_length:
                raise ValueError(
                    f"text {text!r} is {len(ids)} tokens with SOT/EOT, more than the context "
                    f"length {context_length}"
                )
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def tokenize_templates(
        self,
        text: str,
        templates: Sequence[str] = VILD_TEMPLATES,
        context_length: int = 77,
    ) -> torch.Tensor:
        """[T, context_length]: ``text`` in each template (the reference's prompt ensemble)."""
        return self.tokenize([t.format(text) for t in templates], context_length)
