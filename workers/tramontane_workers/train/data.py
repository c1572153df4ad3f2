"""Training data: tokenized conversations, a resumable weighted mixture, padded batches.

Files are read and tokenized with the same code that validates them (`contract.datasets`), so
the loss mask is exactly "assistant tokens with weight != 0". `MixtureSampler` picks each
sequence's file by weight and walks each file in a seeded shuffled order, epoch after epoch;
its whole state is a few integers, saved in every checkpoint so a resumed run continues with
the very batches it would have seen. Every worker builds the same global batch and keeps its
own slice of it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

from tramontane_workers.contract.datasets import iter_checked, open_uri
from tramontane_workers.contract.datasets_rules import Violation
from tramontane_workers.contract.datasets_tokens import Encoded

IGNORE_INDEX = -100  # labels the loss skips (transformers' convention)


class DatasetError(ValueError):
    """A training or validation file has a bad line or nothing to train on."""


def load_conversations(uri: str, sequence_length: int) -> list[Encoded]:
    """Every conversation of a file, truncated to `sequence_length`; a bad line is an error."""
    conversations: list[Encoded] = []
    with open_uri(uri) as stream:
        for number, result in iter_checked(stream):
            if isinstance(result, Violation):
                where = f"{result.path}: " if result.path else ""
                raise DatasetError(f"{uri}:{number}: {where}{result.message}")
            if result is not None:
                conversations.append(
                    Encoded(result.tokens[:sequence_length], result.mask[:sequence_length])
                )
    if not any(c.trainable for c in conversations):
        raise DatasetError(f"{uri}: no assistant token to train on")
    return conversations


@dataclass
class MixtureSampler:
    """Draws conversations from several files in proportion to their weights (resumable)."""

    sizes: list[int]
    weights: list[float]
    seed: int
    draws: int = 0
    cursors: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.cursors:
            self.cursors = [0] * len(self.sizes)

    def _order(self, source: int, epoch: int) -> list[int]:
        order = list(range(self.sizes[source]))
        random.Random(f"{self.seed}/{source}/{epoch}").shuffle(order)
        return order

    def next_indices(self, count: int) -> list[tuple[int, int]]:
        """(file, conversation) pairs for the next `count` sequences."""
        picks = []
        for _ in range(count):
            rng = random.Random(f"{self.seed}/pick/{self.draws}")
            source = rng.choices(range(len(self.sizes)), weights=self.weights)[0]
            cursor = self.cursors[source]
            epoch, offset = divmod(cursor, self.sizes[source])
            picks.append((source, self._order(source, epoch)[offset]))
            self.cursors[source] += 1
            self.draws += 1
        return picks

    def state(self) -> dict[str, Any]:
        return {"draws": self.draws, "cursors": list(self.cursors)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.draws, self.cursors = int(state["draws"]), [int(c) for c in state["cursors"]]


def collate(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask, and labels (-100 where no loss applies)."""
    width = max(len(e.tokens) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.tokens)
        tokens = torch.tensor(example.tokens, dtype=torch.long)
        ids[row, :n] = tokens
        attention[row, :n] = 1
        keep = torch.tensor(example.mask, dtype=torch.bool)
        labels[row, :n] = torch.where(keep, tokens, torch.tensor(IGNORE_INDEX))
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def worker_slice(rows: list[Any], rank: int, world: int) -> list[Any]:
    """This worker's share of a global batch (rows rank, rank+world, ...)."""
    return rows[rank::world]
