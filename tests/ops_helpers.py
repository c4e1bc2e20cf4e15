"""Tiny torchtitan models grown through real plans, for the operator tests (float64 on CPU), and the
tiny family the runtime and eval tests train."""

import torch

from growdsl.ops.model import build_model
from growdsl.plan import plan_source

# A model that trains a step in milliseconds on the tests' vocab-400 corpus (conftest's data_dir).
TINY_RUN = """model llama dim 32 heads 2 ffn 64 vocab 400 padded
seq 32
batch 4 seqs
lr 1e-2 to 1e-3
warmup 3 steps
"""

SEQ = 16
# GQA (4 query heads over 2 kv heads), head_dim 16, an FFN that is no multiple of anything.
FAMILY = "model llama dim 64 heads 4 kv_heads 2 ffn 96 vocab 101 layers 12\nseq 16\nbatch 4 seqs\nwarmup 1 step\n"


def grown_plan(growth: str, base: str = "3L", family: str = FAMILY):
    """The plan of `train BASE; GROWTH; train`, and its growth."""
    plan = plan_source(f"{family}train {base} for 10 steps\n{growth}\ntrain 10 steps")
    return plan, plan.stages[1].growths[0]


def models(plan, seed: int = 0):
    """(base, target) models of the plan's first two stages, freshly initialised, float64."""
    base = build_model(plan.stages[0].shape, SEQ, dtype=torch.float64, seed=seed)
    target = build_model(plan.stages[1].shape, SEQ, dtype=torch.float64, seed=seed + 1)
    return base, target


def probe(vocab: int = 101, seed: int = 7) -> torch.Tensor:
    return torch.randint(0, vocab, (2, SEQ), generator=torch.Generator().manual_seed(seed))


def train_ligo(ligo, target, tokens, phase) -> list[float]:
    """Train a LiGO map alone for the plan's phase on one batch (predict the batch itself); losses."""
    opt = torch.optim.AdamW(ligo.parameters(), lr=phase.lr)
    losses = []
    for _ in range(phase.steps):
        loss = torch.nn.functional.cross_entropy(ligo(target, tokens).flatten(0, 1), tokens.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses
