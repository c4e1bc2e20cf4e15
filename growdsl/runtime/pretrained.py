"""The weights of the model a schedule starts from (`model from "DIR"`): a Hugging Face Llama's (or
Mixtral's) safetensors, checked again as the run starts (growdsl.plan.imported), renamed and their query/key
rows permuted by torchtitan's own Llama3StateDictAdapter (the inverse of what export does), or a
growdsl checkpoint's model, verified against its manifest; written into the freshly built stage-0
model. safetensors and checked DCP files only: nothing loaded can run code."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from growdsl.ops.experts import from_mixtral
from growdsl.ops.model import model_args
from growdsl.plan.imported import ModelFolderError, read_hf, read_run
from growdsl.plan.plan import Start
from growdsl.runtime import checkpoint


def load_start(start: Start, model: nn.Module, seq_len: int) -> None:
    """Write the model `start` names into `model` (built in its shape, whole, on any device)."""
    if start.kind == "run":
        _load_checkpoint(start, model)
        return
    from torchtitan.models.llama3.model.state_dict_adapter import Llama3StateDictAdapter

    found = read_hf(Path(start.folder))
    if found.shape != start.shape:
        raise ModelFolderError(
            f"{start.folder} holds a {found.shape.describe()} model now; the schedule was planned on a "
            f"{start.shape.describe()} one: plan it again"
        )
    hf = {}
    for file in found.files:
        try:
            with safe_open(str(found.folder / file), framework="pt") as f:
                for name in f.keys():
                    if not name.endswith("rotary_emb.inv_freq"):
                        hf[name] = f.get_tensor(name)
        except Exception as e:  # safetensors' SafetensorError, an OSError: the file changed or is damaged
            raise ModelFolderError(f"{found.folder / file} cannot be read: {e}") from None
    if start.shape.tied_embeddings:
        hf.pop("lm_head.weight", None)  # one table: the input embedding's
    experts = from_mixtral(hf, start.shape) if start.shape.experts else {}  # a Mixtral's, taken out first
    dense = replace(start.shape, experts=None)
    ours = Llama3StateDictAdapter(model_args(dense, seq_len), None).from_hf(hf) | experts
    if start.shape.tied_embeddings:
        ours["output.weight"] = ours["tok_embeddings.weight"]
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name != "freqs_cis":  # RoPE's table: the model's own, from its shape
                tensor.copy_(ours[name].to(tensor.dtype))


def _load_checkpoint(start: Start, model: nn.Module) -> None:
    """A growdsl checkpoint's model weights, verified against its manifest and read without running
    any of its code (growdsl.runtime.checkpoint)."""
    path = Path(start.folder)
    try:
        progress = checkpoint.check(path)
        found = read_run(path)
    except checkpoint.CheckpointError as e:
        raise ModelFolderError(str(e)) from None
    if found.shape != start.shape or progress.ramps:
        raise ModelFolderError(f"{path} holds another model now than the schedule was planned on: plan it again")
    weights = {k: v for k, v in model.state_dict().items() if k != "freqs_cis"}  # RoPE's table: the model's own
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*single process.*")
        try:
            checkpoint.read(path, {"model": weights})
        except checkpoint.CheckpointError as e:
            raise ModelFolderError(str(e)) from None
