"""The model a schedule starts from (`model from "DIR"`), read without torch: a Hugging Face Llama
folder's config.json and its safetensors headers, or a growdsl run's records, so that the plan is
made on the model's own shape and a folder that is not a Llama, or misses a shard, or holds a tensor
of another shape, is an error at plan time naming the file. Only safetensors are read: a
pytorch_model.bin is a pickle, which can run code."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

from growdsl.errors import GrowdslError
from growdsl.files import FileProblem, not_plain_under, parse_json, read_json
from growdsl.plan.layermap import MAX_LAYERS
from growdsl.plan.reading import MAX_COUNT
from growdsl.plan.shape import Experts, ModelShape, RopeScaling
from growdsl.records.progress import PROGRESS, CheckpointError, committed, is_committed, read_progress

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
DTYPES = {"F32": 4, "F16": 2, "BF16": 2}  # the dtypes growdsl reads, and their sizes in bytes
MAX_HEADER = 100 * 2**20  # a safetensors header past this is no model's


class ModelFolderError(GrowdslError, ValueError):
    """A folder that is not a model growdsl can start from; the message names the file and why."""


@dataclass(frozen=True)
class HFModel:
    """A Hugging Face Llama folder: its shape, its weight files, and each tensor's (file, dtype, shape)."""

    folder: Path
    shape: ModelShape
    files: tuple[str, ...]
    tensors: dict[str, tuple[str, str, tuple[int, ...]]]


def read_hf(folder: Path) -> HFModel:
    """The Llama in `folder`, every tensor the shape needs present with its shape (a tied model may
    leave out lm_head.weight), in float32, float16 or bfloat16."""
    if not folder.is_dir():
        raise ModelFolderError(f"{folder} is not a folder: name a Hugging Face model folder (config.json, safetensors)")
    if any(folder.glob("ckpt-[0-9]*")):
        raise ModelFolderError(f"{folder} holds a run's checkpoints: name the run (its parent) or one checkpoint")
    shape = read_config(folder / "config.json")
    files = _weight_files(folder)
    tensors: dict[str, tuple[str, str, tuple[int, ...]]] = {}
    for name in files:
        for tensor, (dtype, dims) in _header(folder / name).items():
            if tensor in tensors:
                raise ModelFolderError(f"{folder / name} holds {tensor} again ({tensors[tensor][0]} holds it too)")
            tensors[tensor] = (name, dtype, dims)
    wanted = expected_tensors(shape)
    for tensor, dims in wanted.items():
        if tensor not in tensors:
            if tensor == "lm_head.weight" and shape.tied_embeddings:
                continue
            where = SINGLE if files == (SINGLE,) else INDEX
            raise ModelFolderError(f"{folder / where} has no {tensor}: the model is incomplete")
        file, dtype, have = tensors[tensor]
        if have != dims:
            raise ModelFolderError(
                f"{folder / file}: {tensor} is {list(have)}, but config.json makes it {list(dims)}: the weights "
                f"and config.json are of different models"
            )
        if dtype not in DTYPES:
            raise ModelFolderError(f"{folder / file}: {tensor} is {dtype}; growdsl reads {', '.join(DTYPES)}")
    extra = sorted(set(tensors) - set(wanted) - {"lm_head.weight"})
    rotary = [t for t in extra if t.endswith("rotary_emb.inv_freq")]  # a buffer some exports keep
    if len(extra) > len(rotary):
        other = next(t for t in extra if t not in rotary)
        raise ModelFolderError(f"{folder / tensors[other][0]} holds {other}, which a Llama of config.json has not")
    return HFModel(folder, shape, files, tensors)


def expected_tensors(shape: ModelShape) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Hugging Face Llama of `shape`, by name, with its dimensions."""
    d, kv = shape.dim, shape.n_kv_heads * shape.head_dim
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (shape.vocab_size, d), "model.norm.weight": (d,)}
    for i in range(shape.n_layers):
        p = f"model.layers.{i}."
        out |= {
            p + "self_attn.q_proj.weight": (d, d),
            p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, d),
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
        }
        if shape.experts is None:
            out |= {
                p + "mlp.gate_proj.weight": (shape.ffn_dim, d),
                p + "mlp.up_proj.weight": (shape.ffn_dim, d),
                p + "mlp.down_proj.weight": (d, shape.ffn_dim),
            }
            continue
        moe = p + "block_sparse_moe."  # a Mixtral's: every block a mixture
        out[moe + "gate.weight"] = (shape.experts.count, d)
        for e in range(shape.experts.count):
            out |= {
                f"{moe}experts.{e}.w1.weight": (shape.ffn_dim, d),
                f"{moe}experts.{e}.w2.weight": (d, shape.ffn_dim),
                f"{moe}experts.{e}.w3.weight": (shape.ffn_dim, d),
            }
    out["lm_head.weight"] = (shape.vocab_size, d)
    return out


MAX_EXPERTS = 4096  # far past any model's (DeepSeek-V3: 256); a plan lists every expert's tensors


def read_config(file: Path) -> ModelShape:
    """config.json as growdsl's shape, read as transformers reads it; what growdsl's Llama cannot
    compute exactly is refused."""
    if not file.exists():
        raise ModelFolderError(f"{file} is missing: not a Hugging Face model folder")
    _regular(file)
    try:
        config = read_json(file)
    except FileNotFoundError:
        raise ModelFolderError(f"{file} is missing: not a Hugging Face model folder") from None
    except FileProblem as e:
        raise ModelFolderError(str(e)) from None
    except OSError as e:
        raise ModelFolderError(f"{file} is unreadable: {e.strerror}") from None
    if not isinstance(config, dict):
        raise ModelFolderError(f"{file} is not a model's config")
    model_type = config.get("model_type")
    if model_type not in ("llama", "mixtral"):
        raise ModelFolderError(
            f"{file}: model_type is {model_type!r}, not 'llama' or 'mixtral': growdsl grows Llama models (RoPE, "
            f"RMSNorm, SwiGLU, no biases), with a mixture of experts or not"
        )

    def count(key: str, default: int | None = None) -> int:
        value = config.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_COUNT:
            raise ModelFolderError(f"{file}: {key} is {value!r}, not a whole number from 1 to {MAX_COUNT:,}")
        return value

    def whole(key: str, value, default: int) -> int:
        value = default if value is None else value
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 2**40:
            raise ModelFolderError(f"{file}: {key} is {value!r}, not a whole number above 0")
        return value

    def number(key: str, value, default: float) -> float:
        value = default if value is None else value
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1e30:
            raise ModelFolderError(f"{file}: {key} is {value!r}, not a number above 0 (and below 1e30)")
        return float(value)

    dim, heads, layers = count("hidden_size"), count("num_attention_heads"), count("num_hidden_layers")
    kv = count("num_key_value_heads", heads)
    for key, wrong in (("hidden_act", config.get("hidden_act", "silu") not in ("silu", "swish")),
                       ("attention_bias", bool(config.get("attention_bias"))),
                       ("mlp_bias", bool(config.get("mlp_bias")))):  # fmt: skip
        if wrong:
            raise ModelFolderError(f"{file}: {key} is {config[key]!r}: growdsl's Llama has silu and no biases")
    if dim % heads or heads % kv:
        raise ModelFolderError(f"{file}: {heads} heads do not divide hidden_size {dim}, or {kv} kv heads the heads")
    if config.get("head_dim") not in (None, dim // heads):
        raise ModelFolderError(
            f"{file}: head_dim {config['head_dim']} is not hidden_size / num_attention_heads = {dim // heads}, "
            f"which growdsl's Llama (torchtitan's) requires"
        )
    # transformers 5 writes rope_parameters (with rope_theta); before, rope_scaling and rope_theta; where
    # both are given, rope_scaling's scaling wins, as transformers reads it
    parameters, legacy = config.get("rope_parameters") or {}, config.get("rope_scaling")
    if not isinstance(parameters, dict) or not isinstance(legacy, (dict, type(None))):
        raise ModelFolderError(f"{file}: rope_parameters or rope_scaling is not an object")
    rope = legacy or parameters
    theta = number("rope_theta", parameters.get("rope_theta", config.get("rope_theta")), 10000.0)
    longest = count("max_position_embeddings", 2048)
    tied = config.get("tie_word_embeddings", False)
    if not isinstance(tied, bool):
        raise ModelFolderError(f"{file}: tie_word_embeddings is {tied!r}, not true or false")
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        scaling = RopeScaling(kind="none", factor=1.0, original_max_position_embeddings=longest)
    elif kind == "linear":
        scaling = RopeScaling(
            kind="linear", factor=number("factor", rope.get("factor"), 1.0), original_max_position_embeddings=longest
        )
    elif kind == "llama3":
        scaling = RopeScaling(
            kind="llama3",
            factor=number("factor", rope.get("factor"), 8.0),
            low_freq_factor=number("low_freq_factor", rope.get("low_freq_factor"), 1.0),
            high_freq_factor=number("high_freq_factor", rope.get("high_freq_factor"), 4.0),
            original_max_position_embeddings=whole("original_max_position_embeddings",
                                                   rope.get("original_max_position_embeddings"), longest),
        )  # fmt: skip
    else:
        raise ModelFolderError(f"{file}: RoPE scaling {kind!r}; growdsl computes none, linear and llama3")
    experts = None
    if model_type == "mixtral":  # Llama's blocks with Mixtral's routing: growdsl.ops.experts computes exactly this
        for key, wrong in (("sliding_window", config.get("sliding_window") is not None),
                           ("router_jitter_noise", bool(config.get("router_jitter_noise")))):  # fmt: skip
            if wrong:
                raise ModelFolderError(
                    f"{file}: {key} is {config[key]!r}: growdsl attends over the whole context and routes "
                    f"without jitter"
                )
        experts = Experts(count=count("num_local_experts", 8), top_k=count("num_experts_per_tok", 2))
        if experts.count > MAX_EXPERTS:
            raise ModelFolderError(f"{file}: {experts.count:,} experts; growdsl builds at most {MAX_EXPERTS:,}")
        if experts.top_k > experts.count:
            raise ModelFolderError(
                f"{file}: num_experts_per_tok {experts.top_k} is more than its {experts.count} experts"
            )
    return checked(
        file,
        ModelShape(
            experts=experts,
            dim=dim,
            n_layers=layers,
            n_heads=heads,
            n_kv_heads=kv,
            ffn_dim=count("intermediate_size"),
            vocab_size=count("vocab_size"),
            norm_eps=number("rms_norm_eps", config.get("rms_norm_eps"), 1e-6),
            rope_theta=theta,
            tied_embeddings=tied,
            rope_scaling=scaling,
        ),
    )


def _weight_files(folder: Path) -> tuple[str, ...]:
    """The safetensors files: model.safetensors (first, as transformers looks), or the index's shards,
    each named as a plain file of the folder (a file may be a link, as in the Hugging Face cache)."""
    index = folder / INDEX
    if (folder / SINGLE).exists():
        _regular(folder / SINGLE)
        return (SINGLE,)
    if index.exists():
        _regular(index)
        try:
            weight_map = read_json(index)["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ModelFolderError(f"{index} is not a safetensors index: {e}") from None
        for name in names:
            if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
                raise ModelFolderError(f"{index} names {name!r}, not a .safetensors file of the folder")
            if not (folder / name).exists():
                raise ModelFolderError(f"{folder / name} is missing (named by {INDEX}): the model is incomplete")
            _regular(folder / name)
        return tuple(names)
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise ModelFolderError(
            f"{folder} holds its weights as pickles (.bin/.pt), which can run code: growdsl reads safetensors; "
            f"convert them where you trust them: model.save_pretrained(DIR, safe_serialization=True)"
        )
    raise ModelFolderError(f"{folder} has no {SINGLE} or {INDEX}: no weights")


def _regular(file: Path) -> None:
    """A file to read must be a regular one (not a folder, a device or a pipe, which would block)."""
    if not file.is_file():
        raise ModelFolderError(f"{file} is not a regular file")


def _header(file: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """A safetensors file's tensors (dtype, shape), from its JSON header: each of its size, laid end
    to end over the whole data region, as the format requires."""
    try:
        with file.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > MAX_HEADER:
                raise ModelFolderError(f"{file} is not a safetensors file (a header of {size:,} bytes)")
            header = parse_json(f.read(size))
        total = file.stat().st_size - 8 - size
    except (OSError, ValueError, UnicodeDecodeError, struct.error) as e:
        raise ModelFolderError(f"{file} is not a safetensors file: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__", {}), dict):
        raise ModelFolderError(f"{file} is not a safetensors file (its header is no table of tensors)")
    out, spans = {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, dims, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            ok = all(isinstance(x, int) and x >= 0 for x in (*dims, begin, end)) and begin <= end <= total
            ok = ok and (dtype not in DTYPES or end - begin == math.prod(dims) * DTYPES[dtype])
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ModelFolderError(f"{file}: {name} is not a tensor the file holds (truncated or damaged)")
        out[name] = (dtype, dims)
        spans.append((begin, end))
    at = 0
    for begin, end in sorted(spans):
        if begin != at:
            raise ModelFolderError(f"{file}: its tensors overlap or leave gaps (damaged, or not a safetensors file)")
        at = end
    if at != total:
        raise ModelFolderError(f"{file} holds {total - at:,} bytes past its last tensor (damaged)")
    return out


@dataclass(frozen=True)
class RunModel:
    """A growdsl checkpoint a schedule starts from: the checkpoint, its run, the model's shape, and what it
    cost (its recorded training tokens and FLOPs)."""

    checkpoint: Path
    run_dir: Path
    shape: ModelShape
    tokens: int
    flops: int


def is_run(folder: Path) -> bool:
    """A growdsl run directory or checkpoint rather than a Hugging Face folder."""
    return (folder / "run.json").is_file() or (folder / PROGRESS).is_file()


def read_run(folder: Path) -> RunModel:
    """The model of a growdsl checkpoint (a run directory: its newest), read from progress.json and the
    run's plan.json without torch; the checkpoint's files are verified when a run loads it."""
    from growdsl.plan.plan import stage_from_record, with_fields_since

    folder = folder.resolve()
    if (folder / PROGRESS).is_file():
        ckpt, run_dir = folder, folder.parent.parent
        if not is_committed(folder):
            raise ModelFolderError(f"{folder} is not a committed checkpoint (a damaged or unfinished one)")
    else:
        found = committed(folder / "checkpoints")
        if not found:
            raise ModelFolderError(f"{folder} is a run with no complete checkpoint yet")
        ckpt, run_dir = found[0], folder
    problem = not_plain_under(run_dir)  # its files are read, and read again by the run
    if problem:
        raise ModelFolderError(f"{problem}: growdsl reads a run's model only from plain files")
    for file in (ckpt / PROGRESS, run_dir / "plan.json"):
        if not file.is_file():
            raise ModelFolderError(f"{file} is missing: give a checkpoint inside its run directory, or the run")
    try:
        progress = read_progress(ckpt)
    except CheckpointError as e:
        raise ModelFolderError(f"{ckpt} does not describe a model: {str(e)[:300]}") from None
    try:
        plan = read_json(run_dir / "plan.json")
        before = (plan.get("start") or {}).get("tokens", 0)  # what the run's own start had read
        if not _whole(before):
            raise ValueError("its start's tokens are not a whole number")
        record = with_fields_since(progress.plan_prefix[progress.stage], plan["stages"][progress.stage])
        shape = stage_from_record(record).shape
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError,
            RecursionError) as e:  # fmt: skip
        raise ModelFolderError(f"{ckpt} does not describe a model: {str(e).splitlines()[0][:200]}") from None
    if progress.ramps:
        raise ModelFolderError(
            f"{ckpt} is in the middle of a growth ramp (a mask mixes new layers in): start from a later checkpoint"
        )
    tokens, flops = progress.position, progress.flops
    return RunModel(ckpt, run_dir, checked(ckpt / PROGRESS, shape), before + tokens, flops)


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 10**30


def checked(file: Path, shape: ModelShape) -> ModelShape:
    """A shape read from a file, checked as the model statement checks one: sizes growdsl can build,
    heads that divide, an even head dimension, positive RoPE numbers."""
    sizes = (shape.dim, shape.n_heads, shape.n_kv_heads, shape.ffn_dim, shape.vocab_size)
    r = shape.rope_scaling
    problem = (
        f"{shape.n_layers} layers" if not 1 <= shape.n_layers <= MAX_LAYERS
        else "a size out of range" if not all(1 <= x <= MAX_COUNT for x in sizes)
        else f"dim {shape.dim} over {shape.n_heads} heads" if shape.dim % shape.n_heads
        else f"{shape.n_heads} heads over {shape.n_kv_heads} kv heads" if shape.n_heads % shape.n_kv_heads
        else f"an odd head dimension ({shape.head_dim})" if shape.head_dim % 2
        else "a RoPE number at or below 0"
        if min(shape.rope_theta, shape.norm_eps, r.factor, r.low_freq_factor, r.high_freq_factor) <= 0
        or r.original_max_position_embeddings < 1
        else None
    )  # fmt: skip
    if problem:
        raise ModelFolderError(f"{file} describes no model growdsl builds: {problem}")
    return shape
