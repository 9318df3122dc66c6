"""KV-cache bookkeeping for the simulated scheduler: a block pool and a prefix cache.

The pool only counts blocks, as the simulator holds no tensors: a sequence owns
``ceil(tokens / block_size)`` blocks and gives them back when it finishes, is aborted or is
preempted. The prefix cache remembers the hashes of recently computed full prompt blocks
(least recently used evicted first); a hit lets a new sequence skip prefilling those tokens.
It models compute saved, not memory shared: a hit does not lower the blocks a sequence
allocates. Which sequence gets blocks when is decided by :mod:`simulator.scheduler`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks needed to hold ``tokens`` tokens of KV."""
    return -(-tokens // block_size)


class BlockPool:
    """A fixed number of KV blocks, handed out and returned by count."""

    def __init__(self, total_blocks: int) -> None:
        if total_blocks < 1:
            raise ValueError("a block pool needs at least one block")
        self.total_blocks = total_blocks
        self.free_blocks = total_blocks

    @property
    def used_blocks(self) -> int:
        return self.total_blocks - self.free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks in use, 0 to 1 (vLLM's ``kv_cache_usage_perc``)."""
        return self.used_blocks / self.total_blocks

    def can_allocate(self, blocks: int) -> bool:
        return blocks <= self.free_blocks

    def allocate(self, blocks: int) -> None:
        if blocks < 0 or blocks > self.free_blocks:
            raise ValueError(f"cannot allocate {blocks} blocks, {self.free_blocks} free")
        self.free_blocks -= blocks

    def release(self, blocks: int) -> None:
        if blocks < 0 or blocks > self.used_blocks:
            raise ValueError(f"cannot release {blocks} blocks, {self.used_blocks} in use")
        self.free_blocks += blocks


class PrefixCache:
    """Hashes of computed prompt blocks, bounded, least recently used evicted first.

    Hashes are chained (each covers its block and every block before it), so the cached
    prefix of a prompt is its longest run of leading hashes found here.
    """

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity_blocks = capacity_blocks
        self._hashes: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._hashes)

    def match(self, block_hashes: Sequence[bytes]) -> int:
        """How many leading blocks are cached; those are marked recently used."""
        matched = 0
        for block_hash in block_hashes:
            if block_hash not in self._hashes:
                break
            self._hashes.move_to_end(block_hash)
            matched += 1
        return matched

    def insert(self, block_hashes: Sequence[bytes]) -> None:
        for block_hash in block_hashes:
            self._hashes[block_hash] = None
            self._hashes.move_to_end(block_hash)
        while len(self._hashes) > self.capacity_blocks:
            self._hashes.popitem(last=False)
