"""What training reads from a prepared folder: its training stream, front to back, and its held-out
split as a fixed set of sequences. The stream's whole state is one integer, the tokens consumed so
far, so a grown model goes on exactly where its base stopped and a resumed run at the exact next
token."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


class HeldOut:
    """The held-out split as a fixed set of whole sequences spread evenly over all of it (not its
    first documents), the same for every run on this data: what the validation loss is measured on."""

    def __init__(self, path: Path, dtype: str):
        self.tokens = np.memmap(path, dtype=np.dtype(dtype), mode="r")
        self._cached: dict[tuple[int, int], tuple] = {}

    def digest(self) -> str:
        """What names this held-out split: runs validated on different splits do not compare."""
        return hashlib.sha256(np.asarray(self.tokens).tobytes()).hexdigest()[:16]

    def count(self, tokens: int, seq_len: int, multiple: int = 1) -> int:
        """How many sequences `sequences` gives: tokens // seq_len, as far as the split reaches,
        rounded down to a multiple of `multiple` (every process the same share)."""
        n = min(tokens // seq_len, max(0, len(self.tokens) - 1) // seq_len)
        return n - n % multiple

    def sequences(self, tokens: int, seq_len: int, multiple: int = 1):
        """(inputs, targets): `count(...)` sequences starting every (len - 1) // n tokens, so they
        never overlap; targets are the inputs shifted by one."""
        import torch

        n = self.count(tokens, seq_len, multiple)
        if (n, seq_len) not in self._cached:
            stride = (len(self.tokens) - 1) // max(n, 1)
            rows = np.stack([np.asarray(self.tokens[i * stride : i * stride + seq_len + 1]) for i in range(n)])
            ids = torch.from_numpy(rows.astype(np.int64)).reshape(n, seq_len + 1)
            self._cached[n, seq_len] = ids[:, :-1], ids[:, 1:]
        return self._cached[n, seq_len]


class TokenStream:
    """Batches of (inputs, targets) read front to back from the token files (a prepared folder's
    shards, one after the other, as one stream), wrapping at the end.

    `position` counts the tokens consumed (over all ranks); a batch of B sequences of T tokens
    consumes B*T. Rank r of R takes sequences [r*B/R, (r+1)*B/R) of each global batch."""

    def __init__(self, paths: Path | list[Path], dtype: str, position: int = 0):
        files = [paths] if isinstance(paths, Path) else list(paths)
        self.parts = [np.memmap(p, dtype=np.dtype(dtype), mode="r") for p in files if p.stat().st_size]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        if self.starts[-1] < 2:
            raise ValueError(f"{', '.join(map(str, files))} hold fewer than two tokens")
        self.position = position

    def __len__(self) -> int:
        return int(self.starts[-1])

    def next_batch(self, batch: int, seq_len: int, rank: int = 0, world: int = 1):
        import torch

        if batch % world:
            raise ValueError(f"batch {batch} does not split over {world} ranks")
        local = batch // world
        n = len(self) - 1  # the last token is only ever a target
        starts = [(self.position + (rank * local + i) * seq_len) % n for i in range(local)]
        rows = [self._window(s, seq_len + 1) for s in starts]
        self.position += batch * seq_len
        x = torch.from_numpy(np.stack(rows).astype(np.int64))
        return x[:, :-1], x[:, 1:]

    def _window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the stream, across shards, wrapping at its end."""
        out, at = [], start
        while length > 0:
            at %= len(self)
            part = int(np.searchsorted(self.starts, at, side="right")) - 1
            offset = at - int(self.starts[part])
            piece = np.asarray(self.parts[part][offset : offset + length])
            out.append(piece)
            at, length = at + len(piece), length - len(piece)
        return out[0] if len(out) == 1 else np.concatenate(out)
