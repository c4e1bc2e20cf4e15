"""The weights of the model a schedule starts from (`model from "DIR"`): a Hugging Face Llama's
safetensors, checked again as the run starts (growdsl.plan.imported), renamed and their query/key
rows permuted by torchtitan's own Llama3StateDictAdapter (the inverse of what export does), and
written into the freshly built stage-0 model. safetensors only: nothing loaded can run code."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from growdsl.ops.model import model_args
from growdsl.plan.imported import ModelFolderError, read_hf
from growdsl.plan.plan import Start


def load_start(start: Start, model: nn.Module, seq_len: int) -> None:
    """Write the model `start` names into `model` (built in its shape, whole, on any device)."""
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
    ours = Llama3StateDictAdapter(model_args(start.shape, seq_len), None).from_hf(hf)
    if start.shape.tied_embeddings:
        ours["output.weight"] = ours["tok_embeddings.weight"]
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name != "freqs_cis":  # RoPE's table: the model's own, from its shape
                tensor.copy_(ours[name].to(tensor.dtype))
