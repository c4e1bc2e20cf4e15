"""`init zero`: new blocks are identities, new units write nothing into the residual stream."""

from growdsl.ops.depth import copy_layers
from growdsl.ops.operator import GrowthOperator
from growdsl.ops.width import write_widened, zero_new
from growdsl.plan.plan import DepthGrowth


class Zero(GrowthOperator):
    name = "zero"

    def grow(self, src, dst, growth):
        if isinstance(growth, DepthGrowth):
            copy_layers(src, dst, growth)  # the map marks the repeats `zero`: their wo and w2 are zeroed
            return
        write_widened(src, dst, growth, lambda name, w, fresh: zero_new(name, w, fresh, growth.source, growth.target))


OPERATOR = Zero()
