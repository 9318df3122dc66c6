"""Text without a model: prompt sizes, prompt-block hashes, output lengths and output words.

The simulator has no tokenizer; it counts about four characters per token of the rendered
prompt, as English text averages with common BPE vocabularies. Everything a request produces
is deterministic for its seed: how many tokens it generates (and so whether it ends with
``stop`` or ``length``) and which words it writes, one word per token. Validating requests is
left to :mod:`simulator.protocol`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence

CHARS_PER_TOKEN = 4
# A request that may stop on its own generates at least this many tokens first, so answers
# are not implausibly short; below it only max_tokens decides.
MIN_NATURAL_OUTPUT_TOKENS = 16
# Sentences end after this many words, chosen per sentence.
SENTENCE_WORDS = (6, 16)

_VOCABULARY = """
the model serves requests in batches and each step decodes one token for every running
sequence while the scheduler admits waiting prompts when memory allows a cache of keys and
values grows with the context so long answers need more blocks than short ones latency
depends on queueing prompt length and batch size throughput rises with concurrency until the
accelerator saturates a gateway routes traffic to ready instances and an autoscaler adds
replicas when time to first token exceeds its target system reliable fast simple clear
request response stream answer question data value result instance cluster node compute
"""
_WORDS = tuple(_VOCABULARY.split())


def estimate_tokens(text: str) -> int:
    """Prompt tokens of ``text``: about four characters each, at least one."""
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def render_chat(messages: Sequence[tuple[str, str]]) -> str:
    """A chat as a template would lay it out: role markers, contents, the assistant's turn."""
    parts = [f"<|{role}|>\n{content}\n" for role, content in messages]
    parts.append("<|assistant|>\n")
    return "".join(parts)


def prompt_block_hashes(text: str, block_size: int) -> tuple[bytes, ...]:
    """Chained hashes of the full token blocks of ``text``, as vLLM's prefix cache keys."""
    block_chars = block_size * CHARS_PER_TOKEN
    return _chain(
        text[start : start + block_chars].encode()
        for start in range(0, len(text) - block_chars + 1, block_chars)
    )


def token_block_hashes(token_ids: Sequence[int], block_size: int) -> tuple[bytes, ...]:
    """Chained hashes of the full blocks of a prompt given as token ids."""
    return _chain(
        ",".join(map(str, token_ids[start : start + block_size])).encode()
        for start in range(0, len(token_ids) - block_size + 1, block_size)
    )


def _chain(blocks: Iterable[bytes]) -> tuple[bytes, ...]:
    hashes: list[bytes] = []
    previous = b""
    for block in blocks:
        previous = hashlib.blake2b(previous + block, digest_size=16).digest()
        hashes.append(previous)
    return tuple(hashes)


def request_rng(base_seed: int, request_seed: int | None, prompt: str) -> random.Random:
    """The randomness of one request: from its own ``seed`` if given, else from its prompt.

    String seeds are hashed with SHA-512 by :mod:`random`, so the result is stable across
    processes (unlike ``hash()``).
    """
    key = f"seed:{request_seed}" if request_seed is not None else f"prompt:{prompt}"
    return random.Random(f"{base_seed}:{key}")


def choose_output_tokens(
    rng: random.Random, max_tokens: int, min_tokens: int = 0, ignore_eos: bool = False
) -> tuple[int, bool]:
    """How many tokens a request generates, and whether it reaches ``max_tokens``.

    With ``ignore_eos`` it always generates ``max_tokens``; otherwise the end-of-sequence
    token comes after a seeded number of tokens, never before ``min_tokens``.
    """
    if ignore_eos:
        return max_tokens, True
    low = min(max(MIN_NATURAL_OUTPUT_TOKENS, min_tokens), max_tokens)
    count = rng.randint(low, max_tokens)
    return count, count == max_tokens


class WordWriter:
    """Plausible words, one per token, deterministic for its random source."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._words_left = 0
        self._first = True

    def next_token(self) -> str:
        word = self._rng.choice(_WORDS)
        if self._words_left == 0:
            word = word.capitalize()
            self._words_left = self._rng.randint(*SENTENCE_WORDS)
        self._words_left -= 1
        if self._words_left == 0:
            word += "."
        text = word if self._first else " " + word
        self._first = False
        return text

    def tokens(self, count: int) -> list[str]:
        return [self.next_token() for _ in range(count)]
