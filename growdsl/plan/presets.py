"""Named model families: the paper's shapes with their Table 1 hyper-parameters, and a tiny CPU one.

A preset is the *target* family. `train 6L` picks the base depth; growth steps take it there."""

from __future__ import annotations

from dataclasses import dataclass, field

from growdsl.plan.shape import ModelShape

# Table 1 of the paper: context 2048, ~2M-token batches, AdamW (0.9, 0.95), wd 0.1, clip 1.0,
# 3000 warmup steps, cosine decay to a tenth of the max LR.
PAPER_TRAINING = dict(
    seq_len=2048,
    batch_seqs=1024,
    betas=(0.9, 0.95),
    eps=1e-8,
    weight_decay=0.1,
    grad_clip=1.0,
    warmup=("steps", 3000),
    lr_schedule="cosine",
)


@dataclass(frozen=True)
class Preset:
    name: str
    shape: ModelShape
    lr_max: float
    lr_min: float
    training: dict = field(default_factory=lambda: dict(PAPER_TRAINING))


def _llama(dim, layers, heads, kv_heads, ffn, vocab=32000) -> ModelShape:
    return ModelShape(dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads, ffn_dim=ffn, vocab_size=vocab)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("410M", _llama(1024, 24, 16, 16, 2816), 6e-4, 6e-5),
        # TinyLlama's family (the paper's code base): 4 KV heads, which is what makes it 1.1B.
        Preset("1.1B", _llama(2048, 24, 32, 4, 5632), 3e-4, 3e-5),
        Preset("3B", _llama(2560, 32, 20, 4, 7040), 1.6e-4, 1.6e-5),
        Preset("7B", _llama(4096, 32, 32, 32, 11008), 1e-4, 1e-5),
        # Small enough to train through a growth on two CPU cores in about a minute.
        Preset(
            "tiny",
            _llama(128, 4, 4, 4, 384, vocab=4096),
            3e-3,
            3e-4,
            training=dict(PAPER_TRAINING, seq_len=128, batch_seqs=8, warmup=("steps", 20)),
        ),
    ]
}

DEFAULT_PRESET = "1.1B"

# `model llama dim ... heads ...`: the bare family, with the 1.1B run's hyper-parameters.
FAMILY = "llama"


def find_preset(name: str) -> Preset | None:
    folded = {k.lower(): p for k, p in PRESETS.items()}
    return folded.get(name.lower())
