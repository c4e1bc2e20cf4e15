"""Will the paper's 7B and 3B schedules fit 8 and 64 H100-80GB: `growdsl fit`'s measurement (a fake
process group of that many ranks, FakeTensorMode, torch's memory tracker over one forward and backward
on the real sharding) next to the closed-form formula the run's start-up check uses: as shipped
(micro_batch 4), without a micro-batch (the paper's batch at once), and with other micro-batches and
activation checkpointing.

    python bench/fit_clusters.py [--memory 79.6]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from growdsl.plan import plan_source
from growdsl.runtime.fit import COLUMNS, RESERVED_GIB, Cluster, GiB, advice, cells, measure

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory", type=float, default=79.6, help="one GPU's memory in GiB (H100 80GB: 79.6)")
    args = parser.parse_args()
    columns = ["schedule", "settings", "GPUs", "row", *COLUMNS[1:], "fits", "advice"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for name in ("gstack_7b", "gstack_3b"):
        text = (ROOT / "schedules" / f"{name}.grow").read_text()
        variants = {
            "no micro_batch (the whole local batch at once)": text.replace("\nmicro_batch 4", "\n#"),
            "as shipped (micro_batch 4)": text,
            "micro_batch 2, ac selective": text.replace("\ntrain ", "\nmicro_batch 2\nac selective\ntrain ", 1),
            "micro_batch 4, ac full": text.replace("\ntrain ", "\nac full\ntrain ", 1),
        }
        for settings, variant in variants.items():
            plan = plan_source(variant)
            for gpus in (8, 64):
                cluster = Cluster(gpus, int((args.memory - RESERVED_GIB) * GiB))
                begin = time.perf_counter()
                for m in measure(plan, cluster):
                    row = [name, settings, str(gpus), *cells(m), "yes" if m.peak <= cluster.memory else "no"]
                    print("| " + " | ".join([*row, advice(m, cluster) or ""]) + " |", flush=True)
                print(f"<!-- {name} on {gpus}: {time.perf_counter() - begin:.1f} s -->", flush=True)


if __name__ == "__main__":
    main()
