"""`init direct`: copies (G_stack for depth; Net2Net neuron splitting for width; every expert the
feed-forward for upcycling)."""

from growdsl.ops.depth import copy_layers
from growdsl.ops.experts import Upcycling, write_upcycled
from growdsl.ops.operator import GrowthOperator
from growdsl.ops.width import WidthMaps, carry_width, split, write_widened
from growdsl.plan.plan import DepthGrowth, ExpertsGrowth


class Direct(GrowthOperator):
    name = "direct"

    def grow(self, src, dst, growth):
        if isinstance(growth, DepthGrowth):
            copy_layers(src, dst, growth)
            return
        if isinstance(growth, ExpertsGrowth):
            write_upcycled(src, dst, growth.experts, self.upcycling(growth))
            return
        maps, tied = WidthMaps(growth.source, growth.target), growth.source.tied_embeddings
        write_widened(src, dst, growth, lambda name, w, fresh: split(name, w, maps, tied))

    def upcycling(self, growth):
        return Upcycling()

    def carry(self, state, growth, like=None):
        if isinstance(growth, DepthGrowth | ExpertsGrowth):
            return super().carry(state, growth, like)
        return carry_width(state, growth, gather=True)  # copies carry their unit's moments


OPERATOR = Direct()
