"""The network of a fine-tuned reward model: ``(input_ids, attention_mask[, rich inputs]) -> reward per row``.

Where the score is read (``pooling``):

* encoders: the sequence-classification head on the first token (``cls``, through the model's own pooler), or,
  for sentence-transformers backbones trained with mean pooling (their ``1_Pooling/config.json`` says so, as the
  bundled MiniLM's does), the head's linear layer on the mean of the last hidden states over real tokens (``mean``):
  the representation the backbone was trained to produce. On HH-harmless it measures the same as [CLS] within seed
  noise (BENCHMARKS.md); ``TrainConfig.pooling`` can force either;
* encoders, ``rich``: a linear layer of its own on head mode's rich features of three sequences per row (context +
  response, response alone, context alone; :meth:`RewardNet.pooled`), so a fine-tune starts from the
  representation head mode found strongest and trains it end to end;
* decoders (``last``): the ``score`` head applied to the hidden state of the *last non-pad token*, whose position
  is ``attention_mask.sum(-1) - 1`` with right padding. ``pad_token_id`` is never searched for, so a tokenizer
  whose pad token equals eos (most decoders) is safe.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from rm_engine.finetune.batching import BatchPlanConfig, plan_batches


def unwrap_hf(model: nn.Module) -> nn.Module:
    """The Hugging Face ``...ForSequenceClassification`` module inside a possible peft wrapper."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return model
    return model.base_model.model if isinstance(model, PeftModel) else model


POOLINGS = ("cls", "mean", "rich", "last")

# One scored row: token ids of (context + response); with ``pooling="rich"`` the triple (context + response,
# response alone, context alone), see :meth:`RewardNet.collate`.
Row = Sequence[int] | tuple[Sequence[int], Sequence[int], Sequence[int]]


def _linear_head(hf: nn.Module) -> bool:
    """Whether the encoder's ``classifier`` is one linear layer (also inside peft's ``modules_to_save`` wrapper)."""
    head = getattr(hf, "classifier", None)
    return isinstance(getattr(head, "original_module", head), nn.Linear)


def backbone_pooling(path: Path, model: nn.Module, decoder: bool) -> str:
    """The pooling a backbone was trained with: ``last`` for decoders; ``mean`` for a sentence-transformers encoder
    whose pooling config asks for mean pooling and whose head is a plain linear layer; else ``cls``."""
    if decoder:
        return "last"
    if not _linear_head(unwrap_hf(model)):
        return "cls"  # e.g. RoBERTa's classification head reads [CLS] itself
    try:
        modules = json.loads((Path(path) / "modules.json").read_text(encoding="utf-8"))
        pool_dir = next(m["path"] for m in modules if str(m.get("type", "")).endswith(".Pooling"))
        pool = json.loads((Path(path) / pool_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, StopIteration, KeyError, TypeError):
        return "cls"
    return "mean" if pool.get("pooling_mode_mean_tokens") and not pool.get("pooling_mode_cls_token") else "cls"


class RewardNet(nn.Module):
    """A sequence-classification model as a function ``(input_ids, attention_mask) -> reward per row`` (fp32).

    Right padding is assumed (``collate`` produces it). ``pooling``: ``cls`` (encoders' default), ``mean``
    (encoders: masked mean of the last hidden states, then the head's linear layer) or ``last`` (decoders).
    """

    def __init__(self, model: nn.Module, decoder: bool, pooling: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.decoder = decoder
        self.pooling = pooling or ("last" if decoder else "cls")
        hf = unwrap_hf(model)
        if self.pooling not in POOLINGS or (self.pooling == "last") != decoder:
            raise ValueError(f"pooling {self.pooling!r} does not fit a{' decoder' if decoder else 'n encoder'}")
        if decoder and not isinstance(getattr(hf, "score", None), nn.Module):
            raise ValueError(f"{type(hf).__name__}: decoder without a 'score' head is not supported")
        self.rich_head: nn.Linear | None = None
        if self.pooling in ("mean", "rich"):
            if self.pooling == "mean" and not _linear_head(hf):
                raise ValueError(f"{type(hf).__name__}: mean pooling needs a linear 'classifier' head")
            unused = [getattr(getattr(hf, hf.base_model_prefix), "pooler", None)]
            if self.pooling == "rich":
                # Head mode's rich features [e_pr, e_r, e_p * e_r, e_p * e_pr] read by a linear layer of its own;
                # the model's classifier stays in the files but unused.
                self.rich_head = nn.Linear(4 * int(hf.config.hidden_size), 1)
                unused.append(getattr(hf, "classifier", None))
            for module in unused:
                for prm in module.parameters() if isinstance(module, nn.Module) else ():
                    prm.requires_grad_(False)  # unused: DDP would wait for its gradients forever

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *rich: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
        return self.head(self.pooled(input_ids, attention_mask, *rich))[:, 0].float()

    @property
    def head(self) -> nn.Module:
        """The final linear layer (``classifier`` for encoders, ``score`` for decoders; peft's wrapper when LoRA;
        ``rich_head`` with rich pooling)."""
        if self.rich_head is not None:
            return self.rich_head
        hf = unwrap_hf(self.model)
        return hf.score if self.decoder else hf.classifier

    def collate(self, rows: Sequence[Row], pad_id: int, device: torch.device) -> tuple[tuple[torch.Tensor, ...], int]:
        """The forward arguments for ``rows`` and their number of real tokens.

        Plain rows: right-padded ``(input_ids, attention_mask)``. Rich rows ``(joint, response, context)``: three
        padded groups, each padded to its own longest row, with contexts shared by several rows (the chosen and
        rejected side of a pair, or many responses to one prompt) encoded once, plus each row's context index:
        ``(ids, mask, r_ids, r_mask, c_ids, c_mask, c_index)``."""
        if self.pooling != "rich":
            return collate(rows, pad_id, device), sum(len(r) for r in rows)
        slot: dict[tuple[int, ...], int] = {}
        for row in rows:
            slot.setdefault(tuple(row[2]), len(slot))
        contexts = [list(k) for k in slot]
        index = torch.tensor([slot[tuple(row[2])] for row in rows], dtype=torch.long).to(device)
        real = sum(len(r[0]) + len(r[1]) for r in rows) + sum(len(c) for c in contexts)
        return (*collate([r[0] for r in rows], pad_id, device), *collate([r[1] for r in rows], pad_id, device),
                *collate(contexts, pad_id, device), index), real

    def row_length(self, row: Row) -> int:
        """The length batches are grouped by: the (context + response) sequence's."""
        return len(row[0]) if self.pooling == "rich" else len(row)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *rich: torch.Tensor) -> torch.Tensor:
        """The vector :attr:`head` reads per row: the masked mean (``mean``), the last real token's hidden state
        (``last``), the pooler's output on [CLS] (``cls``, encoders whose head is one linear layer), or, for
        ``rich`` (arguments from :meth:`collate`), ``[e_pr, e_r, e_p * e_r, e_p * e_pr]`` where ``e_*`` are the
        L2-normalised masked means of context + response, response and context: head mode's features
        (:mod:`rm_engine.head.features`), now trained end to end."""
        hf = unwrap_hf(self.model)
        body = getattr(hf, hf.base_model_prefix)
        if self.pooling == "rich":
            r_ids, r_mask, c_ids, c_mask, c_index = rich

            def emb(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                mean = masked_mean(body(input_ids=ids, attention_mask=mask)[0], mask)
                return nn.functional.normalize(mean.float(), dim=-1)

            e_pr, e_r, e_p = emb(input_ids, attention_mask), emb(r_ids, r_mask), emb(c_ids, c_mask)[c_index]
            return torch.cat([e_pr, e_r, e_p * e_r, e_p * e_pr], dim=-1)
        if self.pooling == "cls":
            if not _linear_head(hf) or not isinstance(getattr(body, "pooler", None), nn.Module):
                raise ValueError(f"{type(hf).__name__}: [CLS] features need a pooler and a linear 'classifier'")
            return body(input_ids=input_ids, attention_mask=attention_mask)[1]
        if self.pooling == "mean":
            return masked_mean(body(input_ids=input_ids, attention_mask=attention_mask)[0], attention_mask)
        out = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        last = attention_mask.sum(-1).long() - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[rows, H]`` mean of ``hidden`` ``[rows, L, H]`` over the positions where ``mask`` ``[rows, L]`` is 1."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


@torch.no_grad()
def by_length(net: RewardNet, fn: Callable[..., torch.Tensor], seqs: Sequence[Row], pad_id: int,
              device: torch.device, *, batch_tokens: int = 16384) -> torch.Tensor:
    """``fn(*net.collate(batch))`` over ``seqs`` (non-empty) in batches grouped by length under a token budget,
    ``net`` in eval mode, bf16 autocast on CUDA; rows in input order, fp32 on the CPU."""
    was_training = net.training
    net.eval()
    plan = plan_batches([net.row_length(s) for s in seqs],
                        BatchPlanConfig(batch_tokens=batch_tokens, rows_per_item=1, window=0), shuffle=False)
    use_amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    parts, order = [], []
    try:
        for batch in plan:
            args, _ = net.collate([seqs[i] for i in batch], pad_id, device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                parts.append(fn(*args).float().cpu())
            order.extend(batch)
    finally:
        net.train(was_training)
    got = torch.cat(parts)
    out = torch.empty_like(got)
    out[torch.as_tensor(order)] = got
    return out


def collate(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device, multiple: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask)`` on ``device`` (pinned, non-blocking copy on CUDA; padded to a
    multiple of 8 there, which tensor cores and ``torch.compile`` prefer)."""
    if multiple is None:
        multiple = 8 if device.type == "cuda" else 1
    longest = max(len(s) for s in seqs)
    longest = -(-longest // multiple) * multiple
    ids = torch.full((len(seqs), longest), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
    if device.type == "cuda":
        return ids.pin_memory().to(device, non_blocking=True), mask.pin_memory().to(device, non_blocking=True)
    return ids.to(device), mask.to(device)
