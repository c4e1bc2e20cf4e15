"""A checkpoint as a Hugging Face Llama model: model.safetensors, config.json, the tokenizer files,
and a model card (README.md) with the growth lineage.

The weights are renamed and the query/key rows permuted by torchtitan's own Llama3StateDictAdapter
(torchtitan's RoPE rotates interleaved pairs, Hugging Face's rotates halves). config.json declares
the RoPE scaling the model computes: Llama 3.1's for growdsl's own models (torchtitan 0.2.2 always
applies it), an imported model's own (none, linear or llama3); without it the logits would differ."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from growdsl.errors import UsageError
from growdsl.eval.checkpoints import Trained, load
from growdsl.ops.check import non_finite
from growdsl.ops.model import model_args
from growdsl.plan.plan import Plan
from growdsl.plan.render import growth_line
from growdsl.plan.shape import ModelShape


class ExportError(UsageError):
    pass


def export_hf(path: Path, out: Path) -> Path:
    from growdsl.files import unwritable_folder

    why = unwritable_folder(out)  # before a load that may take minutes
    if why:
        raise ExportError(f"--hf: {why}")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty: give a new folder")
    trained = load(path)
    if trained.ramps:
        steps = max(r.steps - r.step for r in trained.ramps)
        raise ExportError(
            f"{trained.path.name} is in the middle of a growth ramp (a mask mixes new layers in, "
            f"which a Llama model cannot express): export a checkpoint {steps} or more steps later"
        )
    bad = non_finite(trained.model)
    if bad is not None:
        raise ExportError(f"{trained.path.name} holds non-finite weights ({bad}): export an earlier checkpoint")
    from safetensors.torch import save_file

    shape = trained.shape
    state = {k: v.detach().cpu().contiguous() for k, v in trained.model.state_dict().items()}
    problem = mixtral_problem(shape, state)
    if problem:
        raise ExportError(f"{trained.path.name}: {problem}")
    hf = hf_state(state, shape, trained.seq_len)
    if shape.tied_embeddings:
        hf.pop("lm_head.weight")  # safetensors stores a shared tensor once; config.json ties it
    hf = {k: v.contiguous() for k, v in hf.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")  # written whole, then renamed: never half a model
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        save_file(hf, str(partial / "model.safetensors"), metadata={"format": "pt"})
        os.chmod(partial / "model.safetensors", 0o644)  # safetensors writes it private; the other files are not
        (partial / "config.json").write_text(json.dumps(config(trained), indent=2))
        _tokenizer_files(trained, partial)
        (partial / "README.md").write_text(model_card(trained))
        os.replace(partial, out)  # onto a missing or empty folder
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def hf_state(state: dict, shape: ModelShape, seq_len: int) -> dict:
    """The model's tensors by Hugging Face's names: a Llama's (torchtitan's Llama3StateDictAdapter), and
    a mixture's as Mixtral's (`block_sparse_moe.gate`, one w1/w2/w3 per expert)."""
    from torchtitan.models.llama3.model.state_dict_adapter import Llama3StateDictAdapter

    dense = {k: v for k, v in state.items() if ".moe." not in k and k != "freqs_cis"}
    hf = Llama3StateDictAdapter(model_args(replace(shape, experts=None), seq_len), None).to_hf(dense)
    if shape.experts is None:
        return hf
    from growdsl.ops.experts import to_mixtral

    return hf | to_mixtral(state, shape)


def mixtral_problem(shape: ModelShape, state: dict) -> str | None:
    """Why a model with experts is no Mixtral (None: it is one, or it has no experts)."""
    e = shape.experts
    if e is None:
        return None
    if e.every != 1:
        return f"experts in one block of every {e.every}: a Mixtral has them in every block"
    if e.shared:
        return "shared experts: a Mixtral has none"
    for name, value in state.items():
        if name.endswith("moe.expert_bias") and value.any():
            return "its routing has a load-balancing bias: a Mixtral routes by the gate alone"
    return None


def config(trained: Trained) -> dict:
    shape = trained.shape
    if shape.experts is not None:  # a Mixtral: Llama's blocks with Mixtral's routing (growdsl.ops.experts)
        kind = {
            "architectures": ["MixtralForCausalLM"],
            "model_type": "mixtral",
            "num_local_experts": shape.experts.count,
            "num_experts_per_tok": shape.experts.top_k,
            "router_jitter_noise": 0.0,
            "output_router_logits": False,
            "sliding_window": None,
        }
        if shape.experts.aux_loss:  # what it trained with, for whoever trains it on in transformers
            kind["router_aux_loss_coef"] = shape.experts.aux_loss
    else:
        kind = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
        kind |= {"attention_bias": False, "mlp_bias": False}
    return {
        **kind,
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.dim,
        "intermediate_size": shape.ffn_dim,
        "num_hidden_layers": shape.n_layers,
        "num_attention_heads": shape.n_heads,
        "num_key_value_heads": shape.n_kv_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": shape.norm_eps,
        **_rope(shape, trained.seq_len),
        "tie_word_embeddings": shape.tied_embeddings,
        "bos_token_id": trained.eot_id if trained.bos_id is None else trained.bos_id,
        "eos_token_id": trained.eot_id,
        "torch_dtype": str(next(trained.model.parameters()).dtype).removeprefix("torch."),
    }


def _rope(shape: ModelShape, seq_len: int) -> dict:
    """RoPE as config.json declares it: the scaling the model computes (growdsl's own models: Llama 3.1's,
    which torchtitan 0.2.2 always applies; an imported model: its own) and the context length it implies."""
    r = shape.rope_scaling
    if r.kind == "llama3":
        # the scaled length, as Llama 3.1 declares it: transformers warns unless it exceeds the original
        # length, and llama3 scaling's frequencies do not depend on it; the trained length: see docs/language.md (model)
        longest = max(seq_len, round(r.original_max_position_embeddings * r.factor))
        scaling: dict[str, object] | None = {
            "rope_type": "llama3",
            "factor": r.factor,
            "low_freq_factor": r.low_freq_factor,
            "high_freq_factor": r.high_freq_factor,
            "original_max_position_embeddings": r.original_max_position_embeddings,
        }
    else:  # an imported model's: its own context length
        longest = max(seq_len, r.original_max_position_embeddings)
        scaling = {"rope_type": "linear", "factor": r.factor} if r.kind == "linear" else None
    return {"rope_theta": shape.rope_theta, "rope_scaling": scaling, "max_position_embeddings": longest}


def _tokenizer_files(trained: Trained, out: Path) -> None:
    from growdsl.eval.checkpoints import tokenizer_file

    source = tokenizer_file(trained.run_dir)
    shutil.copy(source, out / "tokenizer.json")
    if (source.parent / "tokenizer.model").is_file():  # a SentencePiece model, for the slow tokenizer
        shutil.copy(source.parent / "tokenizer.model", out / "tokenizer.model")
    s = trained.specials
    special = {"bos_token": s.eos if s.bos is None else s.bos, "eos_token": s.eos}
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": trained.seq_len,
                "add_bos_token": s.bos is not None,
                "add_eos_token": False,
                **special,
            },
            indent=2,
        )
    )
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def model_card(trained: Trained) -> str:
    """README.md: what the model is and how it was grown, stage by stage."""
    try:
        plan = Plan.from_json(trained.run_file("plan.json").read_text())
    except ValueError as e:  # pydantic's ValidationError is one
        raise ExportError(
            f"{trained.run_file('plan.json')} is not a plan this growdsl reads: {str(e).splitlines()[0]}"
        ) from None
    schedule = trained.run_file("schedule.grow")
    p = trained.progress
    rows = []
    for s in plan.stages[: p.stage + 1]:
        growth = "; ".join(growth_line(g) for g in s.growths) or "-"
        rows.append(
            f"| {s.index} | {growth} | {s.shape.n_layers}L dim {s.shape.dim} | {s.params / 1e6:,.1f}M "
            f"| {s.tokens:,} | {s.flops:.3g} |"
        )
    where = "the end" if p.phase == "end" else f"step {p.step}"
    lines = [
        "---",
        "library_name: transformers",
        "tags: [growdsl, model-growth, llama]",
        "---",
        "",
        f"# {trained.run_dir.name}",
        "",
        f"A Llama model ({trained.shape.describe()}, {sum(t.numel() for t in trained.model.parameters()) / 1e6:,.1f}M "
        f"parameters) grown and trained with growdsl, exported from "
        f"checkpoint `{trained.path.name}`: stage {p.stage} at {where}, after {p.position:,} training tokens and "
        f"{p.flops:.4g} training FLOPs in all (the smaller models' compute counted).",
        "",
        f"Trained on sequences of {trained.seq_len} tokens, each document "
        f"{'' if trained.bos_id is None else f'`{trained.specials.bos}` = {trained.bos_id} + '}its text + "
        f"`{trained.specials.eos}` = {trained.eot_id}; {trained.tokenizer.get_vocab_size():,} tokenizer entries, "
        f"{trained.shape.vocab_size:,} model rows.",
        "",
        "## Growth lineage",
        "",
        "| stage | growth before it | model | params | tokens | FLOPs |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    if schedule.exists():
        lines += ["## Schedule", "", "```", schedule.read_text().rstrip(), "```", ""]
    return "\n".join(lines)
