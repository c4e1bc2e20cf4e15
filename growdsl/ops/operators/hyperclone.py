"""`init hyperclone`: HyperCloning's width growth. The units are tiled (unit u of the grown axis
copies unit u mod the old width, as `direct` does), fan-in split among the clones; then every weight
that reads cloned inputs gets noise that sums to zero over the clones of each input, so the grown
model computes exactly the base's function while the clones no longer get identical gradients."""

import torch

from growdsl.ops.operator import GrowthOperator
from growdsl.ops.width import WidthMaps, carry_width, split, write_widened

# The seed of the noise: the same on every rank (each computes the whole tensor, keeps its shard).
SEED = 0


def _input_index(name: str, m: WidthMaps) -> torch.Tensor | None:
    """The source unit each input column of a weight copies (None: its inputs are not cloned)."""
    if name.endswith("wo.weight"):
        return m.q
    if name.endswith("w2.weight"):
        return m.ffn
    if name.endswith(("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight")) or name == "output.weight":
        return m.dim
    return None  # embeddings (a lookup) and norms (vectors)


def _zero_sum_noise(shape: torch.Size, index: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    """Gaussian noise whose columns sum to zero over every group of clones (columns with the same index)."""
    noise = torch.randn(shape, generator=gen, dtype=torch.float64) * std
    groups = torch.zeros(shape[0], int(index.max()) + 1, dtype=torch.float64).index_add_(1, index, noise)
    counts = torch.bincount(index).to(torch.float64)
    return noise - (groups / counts)[:, index]


class HyperClone(GrowthOperator):
    name = "hyperclone"

    def grow(self, src, dst, growth):
        maps, tied = WidthMaps(growth.source, growth.target), growth.source.tied_embeddings
        relative, gen = growth.options["noise"], torch.Generator().manual_seed(SEED)

        def value(name, w, fresh):
            out = split(name, w, maps, tied)
            index = _input_index(name, maps)
            if relative and index is not None and len(index) > int(index.max()) + 1:
                std = relative * out.double().pow(2).mean().sqrt().item()
                out = out + _zero_sum_noise(out.shape, index, std, gen).to(out.dtype).to(out.device)
            return out

        write_widened(src, dst, growth, value)

    def carry(self, state, growth, like=None):
        return carry_width(state, growth, gather=True)  # clones carry their unit's moments


OPERATOR = HyperClone()
