"""Sequences drawn from several prepared sources by weight, deterministically, so that a run on a
mixture resumes, grows and shards as exactly as a run on one source.

Stride scheduling: sequence after sequence, the source drawn is the one whose (drawn + 1) / weight is
least (ties: the first), where `drawn` counts the sequences drawn from it under the current weights.
The proportions are exact to one sequence at every point, with no random state: the whole state is
each source's position (tokens consumed, as TokenStream's) and each source's `drawn`. Every process
assigns the whole global batch the same way and reads only its rows. The weights are taken exactly
as written (0.7 is 7/10; growdsl.plan.data.exact_shares) and compared in whole numbers, so `0.7 + 0.3` and
`7 + 3` are one mixture and no rounding decides a tie."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from growdsl.plan.data import exact_shares
from growdsl.runtime.stream import TokenStream


@dataclass
class MixtureState:
    positions: list[int]
    drawn: list[int] = field(default_factory=list)  # per source, under the current weights


class Mixture:
    def __init__(self, streams: list[TokenStream], weights: list[float]):
        if len(streams) != len(weights) or not streams:
            raise ValueError("a mixture needs one weight per source")
        self.streams = streams
        self.reweight(weights)

    def reweight(self, weights: list[float]) -> None:
        """New weights (a stage's own mixture): the count under them starts again."""
        if len(weights) != len(self.streams) or any(w < 0 for w in weights) or not any(weights):
            raise ValueError(f"weights {weights} for {len(self.streams)} sources")
        self.weights = [float(w) for w in weights]
        self.drawn = [0] * len(self.streams)
        # source i's k-th draw falls at k / share_i = k * stride_i / M: strides are whole numbers
        exact = exact_shares(self.weights)
        whole = [int(s * math.lcm(*(s.denominator for s in exact))) for s in exact]
        most = math.lcm(*(w for w in whole if w))
        self.strides = [most // w if w else 0 for w in whole]

    @property
    def position(self) -> int:
        """Tokens consumed over all sources."""
        return sum(s.position for s in self.streams)

    def state(self) -> MixtureState:
        return MixtureState([s.position for s in self.streams], list(self.drawn))

    def restore(self, state: MixtureState) -> None:
        for stream, position in zip(self.streams, state.positions):
            stream.position = position
        self.drawn = list(state.drawn) or [0] * len(self.streams)

    def assign(self, n: int) -> list[int]:
        """The sources of the next `n` sequences (and the count moves on). The one-by-one rule, all at
        once: source i's next draws fall at (drawn_i + k) * stride_i, k = 1, 2, ...; the next `n`
        draws are the `n` earliest of those, ties to the first source."""
        live = [i for i, stride in enumerate(self.strides) if stride]
        if max((self.drawn[i] + n) * self.strides[i] for i in live) < 2**62:  # whole numbers in int64
            k = np.arange(1, n + 1, dtype=np.int64)
            times = np.concatenate([(self.drawn[i] + k) * self.strides[i] for i in live])
            sources = np.repeat(live, n)
            chosen = sources[np.lexsort((sources, times))[:n]]
        else:  # weights of many digits: Python's whole numbers
            draws = (((self.drawn[i] + k) * self.strides[i], i) for i in live for k in range(1, n + 1))
            chosen = np.array([i for _, i in heapq.nsmallest(n, draws)])
        for i in live:
            self.drawn[i] += int(np.count_nonzero(chosen == i))
        return chosen.tolist()

    def next_batch(self, batch: int, seq_len: int, rank: int = 0, world: int = 1):
        """This process's rows of the next global batch: row j from source assign()[j], each source
        read front to back from its position."""
        import torch

        if batch % world:
            raise ValueError(f"batch {batch} does not split over {world} ranks")
        sources = self.assign(batch)
        local = batch // world
        taken = [0] * len(self.streams)
        rows = []
        for j, s in enumerate(sources):
            stream = self.streams[s]
            if rank * local <= j < (rank + 1) * local:
                start = (stream.position + taken[s] * seq_len) % (len(stream) - 1)
                rows.append(stream._window(start, seq_len + 1))
            taken[s] += 1
        for stream, n in zip(self.streams, taken):
            stream.position += n * seq_len
        x = torch.from_numpy(np.stack(rows).astype(np.int64))
        return x[:, :-1], x[:, 1:]
