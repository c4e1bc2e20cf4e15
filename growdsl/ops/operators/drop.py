"""`init drop`: Drop-Upcycling. Every expert is a copy of the feed-forward with a share of its hidden
units drawn afresh (growdsl.ops.experts), plus noise if asked."""

from growdsl.ops.experts import Upcycling, write_upcycled
from growdsl.ops.operator import GrowthOperator


class Drop(GrowthOperator):
    name = "drop"

    def upcycling(self, growth):
        return Upcycling(drop=growth.options["ratio"], noise=growth.options["noise"])

    def grow(self, src, dst, growth):
        write_upcycled(src, dst, growth.experts, self.upcycling(growth))


OPERATOR = Drop()
