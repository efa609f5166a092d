"""A fine-tuned reward model: building it from a backbone, reading its score, scoring, saving and loading.

The score of a row is one fp32 number read by :class:`rm_engine.finetune.reward_net.RewardNet` (its docstring says where,
per ``pooling``).

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rm_engine.backbone import build_inputs, fingerprint
from rm_engine.device import torch_device
from rm_engine.finetune.packing import score_packed
from rm_engine.finetune.reward_net import RewardNet, Row, by_length
from rm_engine.head.features import item_ids, items_for

RICH_HEAD_FILE = "rich_head.safetensors"

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

    def with_tie(self, tie_model: str | None, tie_param: float | None) -> FinetuneMeta:
        """A copy recording the learned tie parameter."""
        return dataclasses.replace(self, tie_model=tie_model, tie_param=tie_param)

    @classmethod
    def read(cls, path: Path) -> FinetuneMeta:
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

    def to(self, device: torch.device) -> FinetunedModel:
        """Move the model to ``device`` (in place); returns self."""
        self.net.to(device)
        self.device = device
        return self

    def encode(self, prompts: Sequence[str], histories: Sequence[Any] | None, responses: Sequence[str]) -> list[Row]:
        """One row per (prompt, history, response), with the training-time truncation policy and template: token
        ids, or with rich pooling the (context + response, response, context) triple of token ids."""

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
            _, resp, ctx = items_for(p, h, r, "rich")  # head mode's texts, so both modes read the same inputs
            if ctx.key not in contexts:
                contexts[ctx.key] = item_ids(tok, ctx, n, decoder=False)
            rows.append((j, item_ids(tok, resp, n, decoder=False), contexts[ctx.key]))
        return rows

    def score_ids(self, seqs: Sequence[Row], *, batch_tokens: int = 16384) -> np.ndarray:
        """Scores of already-tokenised rows, in input order, in bf16 autocast on CUDA. A decoder on a GPU scores
        packed rows of ``batch_tokens`` (no padding, :func:`rm_engine.finetune.packing.score_packed`); otherwise
        batches are grouped by length under that token budget."""
        if not seqs:
            return np.zeros(0, dtype=np.float32)
        if self.meta.decoder and self.device.type == "cuda":
            return score_packed(self.net, seqs, self.pad_id, self.device, budget=batch_tokens,
                                max_segment=self.meta.max_length).numpy()
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
    def load(cls, model_dir: str | Path, *, device: str | torch.device | None = "auto") -> FinetunedModel:
        """Load what :meth:`save` wrote. LoRA models re-read their base from the recorded backbone folder and
        refuse a backbone whose fingerprint changed."""
        from transformers import AutoTokenizer

        d = Path(model_dir)
        meta = FinetuneMeta.read(d / META_FILE)
        dev = torch_device(device)
        tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        if meta.decoder:
            tok.padding_side = "right"
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
        if meta.lora:
            from peft import PeftModel


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
