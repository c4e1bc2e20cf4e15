"""lm-eval-harness's view of a growdsl model: an `lm_eval.api.model.LM` over the torchtitan
Transformer and the run's tokenizer.

Scoring is batched: requests are sorted by length (longest first, so a batch pads little and the
first batch shows at once whether memory suffices), padded on the right (a causal model's earlier
positions never see the padding), and put back in order. Contexts are cut from the left to the
model's window, as lm-eval's own HF model does; a trailing space of a context moves to the
continuation (`_encode_pair`, also as lm-eval's HF model)."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from growdsl.ops.layout import full, reshard


class GrowLM(LM):
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        eot_id: int,
        max_length: int,
        *,
        bos_id: int | None = None,
        device: torch.device = torch.device("cpu"),
        batch_size: int = 32,
        mixed: bool = False,
    ):
        """`eot_id` ends a document, `bos_id` (where the tokenizer's convention has one) starts it:
        texts are scored as the model read documents in training."""
        super().__init__()
        self.model, self.tokenizer, self.eot_id, self.bos_id = model, tokenizer, eot_id, bos_id
        self.prefix = [eot_id] if bos_id is None else [bos_id]  # what comes before a document's first token
        self.max_length, self._device, self.batch_size, self.mixed = max_length, device, batch_size, mixed

    # ---- tokens ------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """The text's own tokens: the document's start (BOS) is added where the conventions say, once."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation tokens, split where the context's own tokens end (so a word is
        tokenized as it would be in running text), the context after the document start (the BOS token,
        where the tokenizer has one; an empty context is the end-of-text token otherwise)."""
        if not context:
            return self.prefix, self.encode(continuation)
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, head = self.encode(context + continuation), self.encode(context)
        start = [] if self.bos_id is None else [self.bos_id]
        return start + head, whole[len(head) :]

    # ---- lm-eval's three request types -------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self.score([self.encode_pair(*r.args) for r in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each whole text, scored in disjoint windows of the model's length."""
        windows, owner = [], []
        for i, r in enumerate(requests):
            for w in get_rolling_token_windows(self.encode(r.args[0]), self.prefix[0], self.max_length, 1):
                windows.append(make_disjoint_window(w))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self.score(windows)):
            totals[i] += logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding until a stop string, the end-of-text token or `max_gen_toks`."""
        out = []
        for r in requests:
            context, kwargs = r.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            tokens = ([] if self.bos_id is None else [self.bos_id]) + self.encode(context)
            tokens, new = tokens or self.prefix, list[int]()
            text = ""
            for _ in range(int(kwargs.get("max_gen_toks", 256))):
                window = torch.tensor([(tokens + new)[-self.max_length :]], device=self._device)
                with torch.no_grad(), self._precision():
                    token = int(self._forward(window)[0, -1].argmax())
                if token == self.eot_id:
                    break
                new.append(token)
                text = self.tokenizer.decode(new)
                if any(stop in text for stop in until):
                    break
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
        return out

    # ---- scoring -----------------------------------------------------------------------------

    @torch.no_grad()
    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether greedy decoding gives the continuation) for
        each (context tokens, continuation tokens)."""
        rows = []
        for context, continuation in pairs:
            continuation = continuation[-self.max_length :]
            whole = (context + continuation)[-(self.max_length + 1) :]
            rows.append((whole[:-1], continuation))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            width = len(rows[batch[0]][0])
            x = torch.zeros(len(batch), width, dtype=torch.long)
            for j, i in enumerate(batch):
                x[j, : len(rows[i][0])] = torch.tensor(rows[i][0])
            with self._precision():
                logits = self._forward(x.to(self._device))
            for j, i in enumerate(batch):
                inputs, continuation = rows[i]
                n, k = len(inputs), len(continuation)
                logprobs = F.log_softmax(logits[j, n - k : n].float(), dim=-1)
                target = torch.tensor(continuation, device=logprobs.device)
                total = logprobs.gather(1, target[:, None]).sum().item()
                greedy = bool((logprobs.argmax(-1) == target).all())
                results[i] = (total, greedy)
        return results

    def _forward(self, tokens: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            return full(self.model(tokens))  # a tensor-parallel head's logits are sharded over the vocab
        finally:
            self.model.train(was_training)
            reshard(self.model)

    def _precision(self):
        return torch.autocast(self._device.type, torch.bfloat16) if self.mixed else nullcontext()
