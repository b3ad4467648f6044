"""The bundled toy prior: the model used when none is configured (no download, runs on a CPU).

It is a small pixel-space diffusion model trained by `python -m prolific.toy.train` on procedural renders of
simple objects, so it only knows the toy vocabulary ("a red cube", "a blue torus", ...); see prolific/toy/.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "toy"
DESCRIPTION = ("the bundled toy prior (64×64 pixel-space diffusion model trained on simple coloured shapes; "
               "prompts like \"a red cube\" or \"a blue torus\"; set a model such as "
               "stabilityai/stable-diffusion-2-1-base for anything else)")


def bundled_available() -> bool:
    """True when the bundled weights are present (they are produced by training and shipped in the package)."""
    return all((BUNDLED_MODEL_DIR / sub).is_dir() for sub in ("unet", "text_encoder", "tokenizer", "scheduler"))


def vocabulary_hint() -> str:
    """One sentence naming what the bundled model can draw (its toy.json), for CLI help and error messages."""
    about = json.loads((BUNDLED_MODEL_DIR / "toy.json").read_text())
    return (f"The bundled toy prior draws one object in one colour: shapes {', '.join(about['shapes'])}; "
            f"colours {', '.join(about['colours'])} (e.g. \"a red cube\").")


def unknown_words(prompt: str, tokenizer) -> list[str]:
    """The words of `prompt` that the bundled model's tokenizer has no whole-word token for (toy/tokenizer.py
    gives one to every word of its captions and view suffixes), each once, in order. One-letter words always
    pass: every byte has a word-final token."""
    vocab = tokenizer.get_vocab()
    words = re.findall(r"[^\W_]+", prompt.lower())
    return [w for i, w in enumerate(words) if f"{w}</w>" not in vocab and w not in words[:i]]


def unknown_words_warning(prompt: str, tokenizer) -> str | None:
    """A sentence naming the prompt's words the bundled model does not know, or None when it knows them all."""
    words = unknown_words(prompt, tokenizer)
    if not words:
        return None
    named = ", ".join(f"'{w}'" for w in words)
    return (f"The bundled toy prior does not know the word{'s' if len(words) > 1 else ''} {named}, so the result "
            f"will not follow {'them' if len(words) > 1 else 'it'} (it knows simple one-colour shapes such as "
            "\"a red cube\"); for other prompts use a real model such as stabilityai/stable-diffusion-2-1-base.")
