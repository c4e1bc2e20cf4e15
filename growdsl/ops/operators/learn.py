"""`init learn`: LiGO. The grown model starts where the learned map starts (G_stack's copies for
depth, identity-plus-Gaussian expansions for width); the trainer trains the map, then bakes it."""

from growdsl.ops.depth import copy_layers
from growdsl.ops.ligo import LigoDepth, LigoWidth
from growdsl.ops.operator import GrowthOperator
from growdsl.plan.plan import DepthGrowth


class Learn(GrowthOperator):
    name = "learn"

    def grow(self, src, dst, growth):
        if isinstance(growth, DepthGrowth):
            copy_layers(src, dst, growth)
        else:
            LigoWidth(src, growth).bake(dst)

    def learner(self, src, growth):
        return (LigoDepth if isinstance(growth, DepthGrowth) else LigoWidth)(src, growth)


OPERATOR = Learn()
