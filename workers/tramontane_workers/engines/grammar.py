"""JSON-constrained decoding for the reference engine, with xgrammar (vLLM's own backend).

`JsonGrammars` builds xgrammar's `TokenizerInfo` from the model's mistral-common tokenizer
(SentencePiece pieces with byte fallback, or Tekken byte pieces), compiles a JSON Schema into a
grammar once per schema text (xgrammar's compiler caches compiled grammars, bounded by
`cache_limit_bytes`) and gives each request its own `GrammarMatcher`. `mask_logits` applies the
matchers' token bitmasks to their rows of a batch of logits in one call, so constrained and
free sequences share a batch.

Choices, and why:
- Control tokens ([INST], [TOOL_CALLS], ...) and <unk> are given an empty piece, which xgrammar
  treats as special: never allowed in constrained output, so none can hide inside a JSON string.
- Whitespace between JSON elements is allowed but bounded (`MAX_WHITESPACE` characters per gap):
  unbounded whitespace lets a model pad forever without closing the document (a well-known
  failure of JSON grammars, see xgrammar#345, ollama#2623), and xgrammar's whitespace-free
  mode would force its own separators instead.
- `strict_mode` stays xgrammar's default (as in vLLM): objects whose schema lists `properties`
  get no other keys unless `additionalProperties` allows them.

xgrammar is imported when the first constrained request arrives, not when a replica starts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tramontane_workers.errors import InvalidRequest

if TYPE_CHECKING:
    import xgrammar

MAX_WHITESPACE = 24  # a newline and 23 spaces: pretty-printed JSON still fits
CACHE_LIMIT_BYTES = 64 * 1024 * 1024
_XGRAMMAR_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


def grammar_vocabulary(raw: Any) -> tuple[list[bytes] | list[str], str]:
    """The encoded vocabulary of a mistral-common tokenizer for xgrammar, and its vocab type.

    Tekken: byte pieces, type "RAW"; SentencePiece: pieces ("▁" for a space, "<0x0A>" for a
    byte), type "BYTE_FALLBACK". Control tokens and <unk> are empty, hence never allowed.
    """
    from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
    from mistral_common.tokens.tokenizers.tekken import is_tekkenizer

    if is_tekkenizer(raw):
        special = int(raw.num_special_tokens)
        return [
            b"" if i < special else raw.id_to_byte_piece(i, SpecialTokenPolicy.RAISE)
            for i in range(raw.n_words)
        ], "RAW"
    unk = int(raw.unk_id)
    return [
        "" if i == unk or raw.is_special(i) else str(raw.id_to_piece(i)) for i in range(raw.n_words)
    ], "BYTE_FALLBACK"


class JsonGrammars:
    """Compiled JSON grammars for one tokenizer; hands out one matcher per request."""

    def __init__(self, raw: Any, *, vocab_size: int, max_threads: int = 2) -> None:
        """`raw`: a mistral-common tokenizer (`MistralTokenizer.instruct_tokenizer.tokenizer`)."""
        import xgrammar as xgr

        vocab, vocab_type = grammar_vocabulary(raw)
        # The model's logits may be wider than the tokenizer's vocabulary (padding): the mask
        # covers them all, so padded ids are never sampled.
        self.vocab_size = max(vocab_size, len(vocab))
        self.info = xgr.TokenizerInfo(
            vocab,
            xgr.VocabType[vocab_type],
            vocab_size=self.vocab_size,
            stop_token_ids=[int(raw.eos_id)],
            add_prefix_space=vocab_type == "BYTE_FALLBACK",
        )
        self._compiler = xgr.GrammarCompiler(
            self.info, max_threads=max_threads, cache_limit_bytes=CACHE_LIMIT_BYTES
        )

    @classmethod
    def from_file(cls, tokenizer_file: Path, *, vocab_size: int) -> JsonGrammars:
        """Grammars for the mistral-common tokenizer in `tokenizer_file`."""
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

        raw = MistralTokenizer.from_file(str(tokenizer_file)).instruct_tokenizer.tokenizer
        return cls(raw, vocab_size=vocab_size)

    @property
    def cache_bytes(self) -> int:
        """Memory the compiled-grammar cache holds now."""
        return int(self._compiler.get_cache_size_bytes())

    def compile(self, schema: str) -> xgrammar.CompiledGrammar:
        """Compile (or fetch from the cache) the grammar of JSON Schema text `schema`."""
        try:
            return self._compiler.compile_json_schema(
                schema, any_whitespace=True, max_whitespace_cnt=MAX_WHITESPACE
            )
        except RuntimeError as exc:  # xgrammar reports unsupported schemas as RuntimeError
            # "[12:00:00] /project/cpp/x.cc:83: Regex parsing error ..." -> the reason only
            reason = _XGRAMMAR_PREFIX.sub("", str(exc).strip().splitlines()[-1])
            raise InvalidRequest(
                f"response_format.json_schema: not supported for constrained decoding: {reason}"
            ) from exc

    def matcher(self, schema: str) -> xgrammar.GrammarMatcher:
        """A fresh matcher (the state of one request's output) for `schema`."""
        import xgrammar as xgr

        return xgr.GrammarMatcher(self.compile(schema))


def mask_logits(logits: torch.Tensor, matchers: Sequence[xgrammar.GrammarMatcher | None]) -> None:
    """Set to -inf, in place, each constrained row's logits of tokens its grammar forbids.

    `logits` is (rows, vocab) on the CPU; `matchers[i]` constrains row i (None: row i is free).
    """
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return
    import xgrammar as xgr

    bitmask = xgr.allocate_token_bitmask(len(matchers), logits.shape[-1])
    for i in rows:
        matcher = matchers[i]
        if matcher is not None:
            matcher.fill_next_token_bitmask(bitmask, i)
    xgr.apply_token_bitmask_inplace(logits, bitmask, indices=rows)
