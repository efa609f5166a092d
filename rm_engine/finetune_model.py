"""A fine-tuned reward model: building it from a backbone, reading its score, scoring, saving and loading.

The score of a row is one fp32 number:

* encoders: the sequence-classification head on the first token (``[CLS]``, through the model's own pooler), or,
  for sentence-transformers backbones trained with mean pooling (their ``1_Pooling/config.json`` says so, as the
  bundled MiniLM's does), the head's linear layer on the mean of the last hidden states over real tokens: the
  representation the backbone was trained to produce. On HH-harmless it measures the same as [CLS] within seed
  noise (BENCHMARKS.md); ``TrainConfig.pooling`` can force either;
* encoders with ``pooling="rich"``: a linear layer of its own on head mode's rich features of three sequences per
  row (context + response, response alone, context alone; :meth:`RewardNet.pooled`), so a fine-tune starts from
  the representation that head mode found strongest and trains it end to end;
* decoders: the ``score`` head applied to the hidden state of the *last non-pad token*, whose position is
  ``attention_mask.sum(-1) - 1`` with right padding. ``pad_token_id`` is never searched for, so a tokenizer whose
  pad token equals eos (most decoders) is safe.

Files (``save``/``load``), safetensors only, never pickles:

* full fine-tune: the Hugging Face model folder (``config.json`` + ``model.safetensors``), the tokenizer, and
  ``finetune.json`` (format, encoder/decoder, max length, truncation policy, backbone, tie parameter, pooling);
  with ``pooling="rich"`` also ``rich_head.safetensors`` (the linear layer on the rich features);
* LoRA: ``adapter_config.json`` + ``adapter_model.safetensors`` (LoRA weights *and* the fully trained head,
  peft's ``modules_to_save``: every module that was newly initialised on load, e.g. ``score``/``classifier``),
  the tokenizer and ``finetune.json``; the base weights are re-read from the backbone folder, whose fingerprint
  must match the one recorded.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from rm_engine.batching import BatchPlanConfig, plan_batches

FORMAT = "rmstudio-finetune/v1"
META_FILE = "finetune.json"


@dataclass(frozen=True)
class FinetuneMeta:
    """What is needed, besides the weights, to load and score a fine-tuned model exactly as it was trained."""

    decoder: bool
    max_length: int
    lora: bool
    backbone: dict[str, str]
    truncation: str
    tie_model: str | None = None
    tie_param: float | None = None
    pooling: str | None = None  # "cls", "mean", "rich" or "last"; None (files written before it existed) = the default
    format: str = FORMAT

    def with_tie(self, tie_model: str | None, tie_param: float | None) -> "FinetuneMeta":
        """A copy recording the learned tie parameter."""
        return dataclasses.replace(self, tie_model=tie_model, tie_param=tie_param)

    @classmethod
    def read(cls, path: Path) -> "FinetuneMeta":
        """Parse ``finetune.json``, naming the file and the field on error."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read fine-tuned model metadata ({exc})") from None
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: format {data.get('format')!r} is not {FORMAT!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in ("decoder", "max_length", "lora", "backbone", "truncation") if n not in data)
        if missing:
            raise ValueError(f"{path}: missing field(s) {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})


def resolve_device(spec: str | torch.device | None, *, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available, else CPU; ``"cuda"`` means this rank's GPU."""
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
        return torch.device("cuda", local_rank)
    return torch.device(spec)


def unwrap_hf(model: nn.Module) -> nn.Module:
    """The Hugging Face ``...ForSequenceClassification`` module inside a possible peft wrapper."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return model
    return model.base_model.model if isinstance(model, PeftModel) else model


POOLINGS = ("cls", "mean", "rich", "last")
RICH_HEAD_FILE = "rich_head.safetensors"

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
        (:mod:`rm_engine.features`), now trained end to end."""
        hf = unwrap_hf(self.model)
        body = getattr(hf, hf.base_model_prefix)
        if self.pooling == "rich":
            r_ids, r_mask, c_ids, c_mask, c_index = rich

            def emb(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                hidden = body(input_ids=ids, attention_mask=mask)[0]
                m = mask.unsqueeze(-1).to(hidden.dtype)
                return nn.functional.normalize(((hidden * m).sum(1) / m.sum(1).clamp(min=1)).float(), dim=-1)

            e_pr, e_r, e_p = emb(input_ids, attention_mask), emb(r_ids, r_mask), emb(c_ids, c_mask)[c_index]
            return torch.cat([e_pr, e_r, e_p * e_r, e_p * e_pr], dim=-1)
        if self.pooling == "cls":
            if not _linear_head(hf) or not isinstance(getattr(body, "pooler", None), nn.Module):
                raise ValueError(f"{type(hf).__name__}: [CLS] features need a pooler and a linear 'classifier'")
            return body(input_ids=input_ids, attention_mask=attention_mask)[1]
        if self.pooling == "mean":
            hidden = body(input_ids=input_ids, attention_mask=attention_mask)[0]
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        out = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        last = attention_mask.sum(-1).long() - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


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


def _no_dropout_config(path: Path) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    for key, value in list(config.to_dict().items()):
        if "dropout" in key and isinstance(value, float):
            setattr(config, key, 0.0)
    config.num_labels = 1
    return config


def disable_dropout(model: nn.Module) -> None:
    """Set every ``nn.Dropout`` to p=0 (the config fields are zeroed too, for functional attention dropout)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


def _from_pretrained(path: Path, config: Any) -> tuple[nn.Module, set[str]]:
    """Load in fp32, offline; returns the model and the top-level modules that were newly initialised."""
    import transformers
    from transformers import AutoModelForSequenceClassification

    dtype_kw = "dtype" if tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56) else "torch_dtype"
    prev = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the load report lists the new head as MISSING: expected
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(path), config=config, local_files_only=True, output_loading_info=True, use_safetensors=True,
            **{dtype_kw: torch.float32})
    finally:
        transformers.logging.set_verbosity(prev)
    new: set[str] = set()
    for key in info.get("missing_keys", ()):
        parts = key.split(".")
        if parts[0] != model.base_model_prefix:
            new.add(parts[0])  # the head: "score", "classifier"
        elif len(parts) > 2 and parts[1] == "pooler":
            new.add("pooler")  # an encoder saved without its pooler: trained from scratch, so it must be saved
    return model, new


def load_backbone_model(path: Path, tokenizer: Any, cfg: Any, *, decoder: bool) -> nn.Module:
    """A fresh sequence-classification model (num_labels=1, fp32, dropout off) from a backbone folder, with LoRA
    adapters when ``cfg.lora`` and gradient checkpointing when ``cfg.grad_checkpointing``."""
    config = _no_dropout_config(path)
    if decoder:
        config.pad_token_id = tokenizer.pad_token_id
    model, new_modules = _from_pretrained(path, config)
    disable_dropout(model)
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False
    if cfg.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora:
        from peft import LoraConfig, TaskType, get_peft_model

        head = "score" if decoder else "classifier"
        to_save = sorted(new_modules | ({head} if hasattr(model, head) else set()))
        lcfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                          target_modules="all-linear", modules_to_save=to_save)
        model = get_peft_model(model, lcfg)
    return model


class FinetunedModel:
    """A trained (or loaded) fine-tuned reward model: ``score``, ``score_ids``, ``save``, ``load``."""

    def __init__(self, net: RewardNet, tokenizer: Any, meta: FinetuneMeta, device: torch.device) -> None:
        self.net = net
        self.tokenizer = tokenizer
        self.meta = meta
        self.device = device
        pad = tokenizer.pad_token_id
        if pad is None:
            raise ValueError("FinetunedModel: the tokenizer has no pad token (load_tokenizer sets one for decoders)")
        self.pad_id = int(pad)

    @property
    def model(self) -> nn.Module:
        """The underlying Hugging Face (or peft) module."""
        return self.net.model

    def encode(self, prompts: Sequence[str], histories: Sequence[Any] | None, responses: Sequence[str]) -> list[Row]:
        """One row per (prompt, history, response), with the training-time truncation policy and template: token
        ids, or with rich pooling the (context + response, response, context) triple of token ids."""
        from rm_engine.backbone import build_inputs, build_text_inputs, render_context

        if len(prompts) != len(responses) or (histories is not None and len(histories) != len(prompts)):
            raise ValueError(f"score: {len(prompts)} prompts, {len(responses)} responses and "
                             f"{'no' if histories is None else len(histories)} histories must match")
        hs = histories if histories is not None else [None] * len(prompts)
        tok, n = self.tokenizer, self.meta.max_length
        joint = [build_inputs(tok, p, h, r, n, decoder=self.meta.decoder) for p, h, r in zip(prompts, hs, responses)]
        if self.meta.pooling != "rich":
            return joint
        contexts: dict[str, list[int]] = {}  # many responses to one prompt: tokenise its context once
        rows: list[Row] = []
        for j, p, h, r in zip(joint, prompts, hs, responses):
            text = render_context(p, h)
            if text not in contexts:
                contexts[text] = build_text_inputs(tok, text, n, cut="left")
            rows.append((j, build_text_inputs(tok, r, n, cut="right"), contexts[text]))
        return rows

    def score_ids(self, seqs: Sequence[Row], *, batch_tokens: int = 16384) -> np.ndarray:
        """Scores of already-tokenised rows, in input order; batches are grouped by length under a token budget
        and run in bf16 autocast on CUDA."""
        if not seqs:
            return np.zeros(0, dtype=np.float32)
        return by_length(self.net, self.net, seqs, self.pad_id, self.device, batch_tokens=batch_tokens).numpy()

    def score(self, prompts: Sequence[str], histories: Sequence[Any] | None, responses: Sequence[str], *,
              batch_tokens: int = 16384) -> np.ndarray:
        """One raw reward per (prompt, history, response), float32, in input order."""
        return self.score_ids(self.encode(prompts, histories, responses), batch_tokens=batch_tokens)

    def save(self, out_dir: str | Path) -> Path:
        """Write weights (safetensors), tokenizer and ``finetune.json`` into ``out_dir`` (created)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(out), safe_serialization=True)
        self.tokenizer.save_pretrained(str(out))
        if self.net.rich_head is not None:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in self.net.rich_head.state_dict().items()},
                      str(out / RICH_HEAD_FILE))
        (out / META_FILE).write_text(json.dumps(dataclasses.asdict(self.meta), indent=2), encoding="utf-8")
        return out

    @classmethod
    def load(cls, model_dir: str | Path, *, device: str | torch.device | None = "auto") -> "FinetunedModel":
        """Load what :meth:`save` wrote. LoRA models re-read their base from the recorded backbone folder and
        refuse a backbone whose fingerprint changed."""
        from transformers import AutoTokenizer

        d = Path(model_dir)
        meta = FinetuneMeta.read(d / META_FILE)
        dev = resolve_device(device)
        tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        if meta.decoder:
            tok.padding_side = "right"
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
        if meta.lora:
            from peft import PeftModel

            from rm_engine.backbone import fingerprint

            base_path = Path(meta.backbone["path"])
            if not (base_path / "config.json").is_file():
                raise ValueError(f"{d / META_FILE}: LoRA base backbone {base_path} is missing")
            if meta.backbone.get("fingerprint") and fingerprint(base_path) != meta.backbone["fingerprint"]:
                raise ValueError(f"{d / META_FILE}: backbone {base_path} changed since training (fingerprint differs)")
            config = _no_dropout_config(base_path)
            if meta.decoder:
                config.pad_token_id = tok.pad_token_id
            base, _ = _from_pretrained(base_path, config)
            model: nn.Module = PeftModel.from_pretrained(base, str(d), is_trainable=False)
        else:
            model, new = _from_pretrained(d, _no_dropout_config(d))
            if new:
                raise ValueError(f"{d}: weights for {', '.join(sorted(new))} are missing from the saved model")
        disable_dropout(model)
        net = RewardNet(model, meta.decoder, meta.pooling)
        if net.rich_head is not None:
            from safetensors.torch import load_file

            try:
                net.rich_head.load_state_dict(load_file(str(d / RICH_HEAD_FILE)))
            except (OSError, RuntimeError) as exc:
                raise ValueError(f"{d / RICH_HEAD_FILE}: cannot load the rich score head ({exc})") from None
        net = net.to(dev).eval()
        return cls(net, tok, meta, dev)
