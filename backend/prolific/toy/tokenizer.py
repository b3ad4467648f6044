"""A small real CLIP BPE tokenizer whose vocabulary spells a given list of words as whole tokens.

Tiny test models and the bundled toy prior need a CLIPTokenizer that is cheap (a few hundred entries instead of
49408) yet behaves like Stable Diffusion's: same normalisation, same byte-level pre-tokenisation, same `</w>`
end-of-word suffix, same start/end tokens. Every byte has a token (alone and word-final), so any text encodes
without unknown tokens; the given words, the view-suffix words and ASCII punctuation get whole-word tokens.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
EOW = "</w>"
# Words of the view-dependent prompt suffixes (prior/prompts.VIEW_SUFFIXES), always in the vocabulary.
VIEW_WORDS = ("front", "side", "back", "overhead", "view", ",")
# CLIP's pre-tokeniser: letter runs, single digits, punctuation runs (text is lower-cased first).
_PIECES = re.compile(r"[^\W\d_]+|\d|[^\s\w]+|_+")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest to unused code points."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    mapping, extra = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _symbols(piece: str, byte_map: dict[int, str]) -> list[str]:
    chars = [byte_map[b] for b in piece.encode("utf-8")]
    chars[-1] += EOW
    return chars


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Greedy BPE exactly as the tokenizers library applies it: repeatedly merge the lowest-ranked pair."""
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        ranked = [p for p in pairs if p[0] is not None]
        if not ranked:
            break
        rank = min(ranked)[0]
        a, b = next((symbols[i], symbols[i + 1]) for r, i in ranked if r == rank)
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                merged.append(a + b)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def build_word_tokenizer(words: list[str], folder: Path, model_max_length: int = 77) -> CLIPTokenizer:
    """Write vocab.json/merges.txt spelling `words` (plus the view-suffix words) into `folder`, load them with
    CLIPTokenizer.from_pretrained, save_pretrained the result there and return it.

    Entries of `words` may be phrases; they are split like CLIP splits text. The start/end tokens come last,
    as in CLIP, so a CLIPTextModel pools the end token by either of its lookup rules.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    byte_map = _bytes_to_unicode()
    alphabet = [byte_map[b] for b in range(256)]
    vocab: dict[str, int] = {}
    for sym in alphabet + [c + EOW for c in alphabet]:
        vocab.setdefault(sym, len(vocab))

    pieces: list[str] = []
    for text in list(words) + list(VIEW_WORDS):
        for piece in _PIECES.findall(text.lower()):
            if piece not in pieces:
                pieces.append(piece)

    # Merges are appended with the lowest priority, so a word already spelled as one token never changes:
    # for each piece, merge the first two symbols BPE leaves until one token remains.
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for piece in pieces:
        symbols = _apply_merges(_symbols(piece, byte_map), ranks)
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            symbols = _apply_merges(symbols, ranks)
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)

    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=model_max_length)
    tokenizer.save_pretrained(str(folder))
    return tokenizer
