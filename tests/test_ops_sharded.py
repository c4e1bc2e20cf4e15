"""The operators on a 2-rank FSDP2 model (CPU, gloo) give bit-identical results to one process,
and depth growth (weights and carried moments) runs without a single collective."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ops_helpers import grown_plan, models

from growdsl.ops.depth import carry_depth
from growdsl.ops.operators import grow

WORLD = 2
GROWTHS = {"depth": "stack x4 init zero", "width": "widen dim 128 init direct"}


def _shard(model):
    from torch.distributed.fsdp import fully_shard

    for block in model.layers.values():
        fully_shard(block)
    fully_shard(model)
    return model


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        for kind, growth in GROWTHS.items():
            plan, g = grown_plan(growth)
            base, target = models(plan)
            base, target = _shard(base), _shard(target)
            src, dst = base.state_dict(), target.state_dict()
            assert type(dst["layers.0.attention.wq.weight"]).__name__ == "DTensor"
            moments = {
                n: {"step": torch.tensor(1.0), "exp_avg": p.detach() * 0.5, "exp_avg_sq": p.detach() ** 2}
                for n, p in src.items()
            }
            if kind == "depth":
                from torch.distributed.tensor.debug import CommDebugMode

                with CommDebugMode() as comm:
                    grow(src, dst, g)
                    carried = carry_depth(moments, g)
                assert comm.get_total_counts() == 0, comm.get_comm_counts()
                with CommDebugMode() as comm:  # the detector does see a gather
                    dst["layers.0.attention.wq.weight"].full_tensor()
                assert comm.get_total_counts() == 1
                gathered = {f"moment.{n}": st["exp_avg"].full_tensor() for n, st in carried.items()}
            else:
                grow(src, dst, g)
                gathered = {}
            gathered.update({n: t.full_tensor() for n, t in target.state_dict().items()})
            if rank == 0:
                torch.save(gathered, os.path.join(out_dir, f"{kind}.pt"))
    finally:
        dist.destroy_process_group()


def _single(kind: str) -> dict[str, torch.Tensor]:
    plan, g = grown_plan(GROWTHS[kind])
    base, target = models(plan)
    src, dst = base.state_dict(), target.state_dict()
    out = {}
    if kind == "depth":
        grow(src, dst, g)
        moments = {n: {"step": torch.tensor(1.0), "exp_avg": p * 0.5, "exp_avg_sq": p**2} for n, p in src.items()}
        out = {f"moment.{n}": st["exp_avg"] for n, st in carry_depth(moments, g).items()}
    else:
        grow(src, dst, g)
    out.update(target.state_dict())
    return out


@pytest.fixture(scope="module")
def sharded_results():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), tmp), nprocs=WORLD, join=True)
        yield {kind: torch.load(os.path.join(tmp, f"{kind}.pt")) for kind in GROWTHS}


@pytest.mark.parametrize("kind", GROWTHS)
def test_sharded_growth_is_bit_identical_to_one_process(sharded_results, kind):
    sharded, single = sharded_results[kind], _single(kind)
    assert sharded.keys() == single.keys()
    for name, value in single.items():
        assert torch.equal(sharded[name], value), name
