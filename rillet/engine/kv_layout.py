"""How the KV cache's pages are shared out among a model's layers.

A model whose layers all attend to the whole context has one group: a sequence's block table
names, for every layer at once, where each block of its tokens lies. A model with sliding-window
layers (Gemma 3: five local layers for each global one) splits its layers into groups of equal
size, each group all-global or all-local, and each group gets its own block table per sequence,
drawn from one shared pool of pages. A page holds `group_size` layers' keys and values for
block_size tokens, so every group's blocks come from the same pool; a local group's blocks that
fall wholly behind the window of every token still to be computed go back to the pool. A long
conversation then holds its whole length for the global layers only, and a window for the rest.
(vLLM's hybrid KV cache manager does the same.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KVLayout:
    # Each group's sliding window (None: whole context); full groups come first.
    group_windows: tuple[int | None, ...]
    # Per layer: its group, and which of the group_size KV tensors it keeps its keys and values in.
    layer_groups: tuple[int, ...]
    layer_slots: tuple[int, ...]
    group_size: int

    @property
    def num_groups(self) -> int:
        return len(self.group_windows)

    @property
    def num_layers(self) -> int:
        return len(self.layer_groups)

    @classmethod
    def single(cls, num_layers: int) -> KVLayout:
        return cls((None,), (0,) * num_layers, tuple(range(num_layers)), num_layers)

    @classmethod
    def of(cls, layer_windows: tuple[int | None, ...], num_layers: int, max_context_len: int) -> KVLayout:
        """layer_windows: each layer's window (empty: none has one). A window that holds the whole
        context is no window."""
        windows = [w if w is not None and w < max_context_len else None
                   for w in (layer_windows or (None,) * num_layers)]
        kinds = sorted(set(windows), key=lambda w: (w is not None, w or 0))
        if kinds == [None]:
            return cls.single(num_layers)
        members = {kind: [i for i, w in enumerate(windows) if w == kind] for kind in kinds}
        size = math.gcd(*(len(layers) for layers in members.values()))
        group_windows, layer_groups, layer_slots = [], [0] * num_layers, [0] * num_layers
        for kind in kinds:
            layers = members[kind]
            for start in range(0, len(layers), size):
                for slot, layer in enumerate(layers[start:start + size]):
                    layer_groups[layer], layer_slots[layer] = len(group_windows), slot
                group_windows.append(kind)
        return cls(tuple(group_windows), tuple(layer_groups), tuple(layer_slots), size)

    def num_pages(self, num_blocks: int) -> int:
        """Pages in the memory that num_blocks blocks of every layer take."""
        return num_blocks * self.num_layers // self.group_size

    def cacheable_blocks(self, num_pages: int) -> int:
        """Blocks of a sequence's positions that a pool of num_pages can keep for the prefix cache
        (the cluster's router pictures a replica's cache with it): each takes a page in every full
        group, since a hit needs the whole chain there, and a windowed group's pages only near its
        end (those behind the window go back to the pool first). With no full group, a page in each."""
        full = sum(1 for w in self.group_windows if w is None)
        return num_pages // (full or self.num_groups)

    def first_needed_block(self, group: int, position: int, block_size: int) -> int:
        """The first block a query at position (and every later one) still reads in the group."""
        window = self.group_windows[group]
        if window is None:
            return 0
        return max(0, position - window + 1) // block_size

    def max_sequence_tokens(self, num_pages: int, block_size: int, max_context_len: int, max_chunk: int) -> int:
        """The longest sequence the pool can hold alone (the scheduler's guarantee that preemption
        always makes room): the whole context, or as many tokens as the full groups' pages allow
        once each windowed group holds its window and a step's chunk of max_chunk new tokens."""
        full = sum(1 for w in self.group_windows if w is None)
        windowed = sum(-(-(w - 1 + max_chunk) // block_size) + 1 for w in self.group_windows if w is not None)
        if full == 0:
            return max_context_len if windowed <= num_pages else 0
        return min(max_context_len, max(0, num_pages - windowed) // full * block_size)
