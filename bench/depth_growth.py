"""Depth growth of a 1.1B-shaped model (6 -> 24 layers, dim 2048, 32 heads / 4 KV heads, FFN
5632, vocab 32000) on CPU in float32, next to the floor: writing every target weight once.

    python bench/depth_growth.py [--repeat 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchtitan.models.llama3 import Transformer

from growdsl.ops.model import model_args
from growdsl.ops.operators import grow
from growdsl.plan import plan_source

SCHEDULES = {
    "G_stack (direct)": "model 1.1B\ntrain 6L for 10B\nstack x4\ntrain 100B",
    "depth zero": "model 1.1B\ntrain 6L for 10B\nstack x4 init zero\ntrain 100B",
    "partial 12-3456*5-56": 'model 1.1B\ntrain 6L for 10B\nstack layers "12-3456*5-56"\ntrain 100B',
}


def empty_model(shape) -> Transformer:
    """Allocated, not initialised: the copy's speed does not depend on the values."""
    with torch.device("meta"):
        model = Transformer(model_args(shape, 2048))
    return model.to_empty(device="cpu")


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def floor_time(dst: dict[str, torch.Tensor], repeat: int) -> float:
    """Writing every target weight once, from a same-shaped copy: what growth cannot beat."""
    staging = {k: torch.empty_like(v).normal_() for k, v in dst.items()}

    def copy() -> None:
        for k, t in dst.items():
            t.copy_(staging[k])

    return timed(copy, repeat)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    plans = {name: plan_source(text) for name, text in SCHEDULES.items()}
    first = next(iter(plans.values()))
    base, target = empty_model(first.stages[0].shape), empty_model(first.stages[1].shape)
    for t in base.state_dict().values():
        t.normal_()
    src, dst = base.state_dict(), target.state_dict()
    nbytes = sum(t.numel() * t.element_size() for t in dst.values())
    floor_s = floor_time(dst, args.repeat)
    print(
        f"1.1B-shaped target: {first.stages[1].params / 1e9:.2f}B params, {nbytes / 1e9:.2f} GB float32; "
        f"torch {torch.__version__}, {args.threads} threads, median of {args.repeat}"
    )
    print(f"{'operation':28} {'seconds':>8} {'GB/s':>6} {'x floor':>8}")
    print(f"{'floor: one copy of weights':28} {floor_s:8.3f} {nbytes / floor_s / 1e9:6.2f} {1.0:8.2f}")
    for name, plan in plans.items():
        g = plan.stages[1].growths[0]
        s = timed(lambda g=g: grow(src, dst, g), args.repeat)
        print(f"{name:28} {s:8.3f} {nbytes / s / 1e9:6.2f} {s / floor_s:8.2f}")


if __name__ == "__main__":
    main()
