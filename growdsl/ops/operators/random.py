"""`init random`: new blocks or units keep the target's fresh init and fade in over a ramp."""

from growdsl.ops import ramp
from growdsl.ops.depth import copy_layers
from growdsl.ops.operator import GrowthOperator
from growdsl.ops.width import in_place, write_widened
from growdsl.plan.operators import start_kind
from growdsl.plan.plan import DepthGrowth


class Random(GrowthOperator):
    name = "random"

    def grow(self, src, dst, growth):
        if isinstance(growth, DepthGrowth):
            copy_layers(src, dst, growth)  # the repeats are left fresh
            return
        write_widened(src, dst, growth, lambda name, w, fresh: in_place(w, fresh))

    def ramps(self, model, growth):
        if isinstance(growth, DepthGrowth):
            fresh = [i for i, o in enumerate(growth.layer_map) if start_kind(o.init) == "fresh"]
            for i in fresh:
                ramp.attach_ramp(model.layers[str(i)])
            return [ramp.Ramp(model.layers[str(i)], growth.ramp_steps, f"layers.{i}") for i in fresh]
        old = (growth.source.dim, growth.source.n_heads, growth.source.ffn_dim)
        ramp.attach_width_ramp(model, *old)
        return [ramp.Ramp(model, growth.ramp_steps, "", old)]


OPERATOR = Random()
