"""Growth operators on torchtitan 0.2.2 Llama3 weights and their AdamW state.

They take the layer map / width spec the plan resolved (growdsl.plan) and never re-derive it.
Each operator works on tensors; DTensors (FSDP2 shards) go through `layout.local` so depth
growth is a shard-local copy."""
