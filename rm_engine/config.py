"""``TrainConfig``: every knob of a training run, frozen, JSON-safe, saved with every model version."""
from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from db.bounds import Bound, FieldError, bounded, check_fields
from db.config import Settings

SOURCES = ("expert", "crowd", "ai")
DEFAULT_SOURCE_WEIGHTS: dict[str, float] = {"expert": 1.0, "crowd": 0.8, "ai": 0.5}
#: A source's loss weight (``TrainConfig.source_weights`` values).
SOURCE_WEIGHT = Bound(0, 100)
MAX_ENSEMBLE = 64
MAX_GPUS = 64
ENV_PREFIX = "RMSTUDIO_TRAIN_"
# How several versions combine into one reward (rm_engine.serving.ensemble); here so that the CLI can offer the
# choices without importing numpy.
COMBINE = ("mean", "min", "uwo")
# Keys a model version's stored config carries besides the fields (``from_dict`` accepts and ignores them).
VERSION_KEYS = frozenset({"truncation"})


class Cancelled(Exception):
    """Raised by training, feature extraction and rescoring when ``should_stop()`` turns true; nothing is
    published then. (Re-exported by ``rm_engine.training``.)"""

# Mode defaults, applied by ``TrainConfig.resolved()`` to fields left at None.
_MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "head": {"epochs": 300, "lr": 3e-3, "weight_decay": 1e-1},  # mlp heads: 1e-2 (see resolved())
    "finetune": {"epochs": 2, "lr": 2e-5, "weight_decay": 0.0},
}
# LoRA adapters start at zero and move only through their low-rank factors: at the full fine-tune's 2e-5 a MiniLM
# LoRA run on HH-harmless stayed at chance (0.498 held out, train 0.507); 2e-4 is the best of 2e-5/1e-4/2e-4/5e-4
# there (BENCHMARKS.md, "LoRA").
LORA_LR = 2e-4


def default_lr(mode: str, lora: bool = False) -> float:
    """The learning rate a run of ``mode`` gets when ``TrainConfig.lr`` is None."""
    return LORA_LR if mode == "finetune" and lora else float(_MODE_DEFAULTS[mode]["lr"])


def default_lrs_text() -> str:
    """The default learning rates in words, for help texts (``"default: 0.003 head, 2e-05 fine-tune, 0.0002
    LoRA"``)."""
    return (f"default: {default_lr('head'):g} head, {default_lr('finetune'):g} fine-tune, "
            f"{default_lr('finetune', lora=True):g} LoRA")


def parse_source_weights(text: str | Mapping[str, Any] | None) -> dict[str, float]:
    """``"expert=1,crowd=0.8,ai=0.5"`` (or a mapping) -> weights; unnamed sources keep their defaults."""
    out = dict(DEFAULT_SOURCE_WEIGHTS)
    if text is None or text == "":
        return out
    items: list[tuple[str, Any]]
    if isinstance(text, Mapping):
        items = list(text.items())
    else:
        items = []
        for part in str(text).split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise ValueError(f"source weight {part.strip()!r}: expected SOURCE=WEIGHT, e.g. expert=1,crowd=0.8,ai=0.5")
            k, v = part.split("=", 1)
            items.append((k, v))
    for k, v in items:
        k = str(k).strip()
        if k not in SOURCES:
            raise ValueError(f"source weight for {k!r}: unknown source (expected one of {', '.join(SOURCES)})")
        label = f"source weight for {k!r}"
        out[k] = SOURCE_WEIGHT.parse(v, label) if isinstance(v, str) else SOURCE_WEIGHT.check(v, label)
    return out


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Attributes:
        mode: ``"head"`` (frozen backbone, cached features, linear/MLP head; CPU default) or ``"finetune"``
            (the whole backbone with a scalar head; GPU default; see ``rm_engine.finetune.train``).
        backbone: ``"minilm"`` (bundled MiniLM-L6) or a local Hugging Face directory under RMSTUDIO_HOME or
            RMSTUDIO_MODEL_DIRS.
        epochs: passes over the training pairs (None: 300 full-batch steps for heads, 2 for finetune).
            Head mode stops early on the validation split.
        lr: learning rate (None: 3e-3 for heads, 2e-5 for a full finetune, 2e-4 with ``lora``).
        batch_size: pairs per step (finetune without a token budget; heads train full-batch when 0).
        batch_tokens: finetune token budget per batch (chosen + rejected, similar lengths); 0 = use batch_size.
        max_batch_pairs: finetune cap on pairs per token-budget batch (0 = the budget alone). Small datasets need
            enough optimizer steps: TRL uses 8 pairs per step; a 16k budget alone packs ~50 short pairs.
        max_length: tokens per (prompt, response) sequence; truncation keeps the response, cuts the prompt left.
        ensemble: K members (different seeds and bootstrap resamples); scores carry the mean and std of the
            members, each centred first (a member's offset is arbitrary).
        source_weights: per-source loss weight (default expert=1.0, crowd=0.8, ai=0.5).
        sources: train only on these sources (None: all).
        ties: ``"model"`` trains ties through a tie model with a learned tie parameter; ``"exclude"`` drops them.
        tie_model: ``"davidson"`` or ``"rao_kupper"``.
        margin_from_strength: margin added per unit of label strength (1 slightly, 2 clearly); 0 = off.
        center_coef: reward centering ``coef * mean((r_c + r_r)^2)`` (TRL recommends 0.01); 0 = off.
        val_fraction: share of prompts held out for validation (grouped by prompt, deterministic by seed).
        seed: seeds the split, initialisation and bootstrap.
        head: ``"linear"`` or ``"mlp"`` (head mode).
        weight_decay: head mode: L2 penalty ``wd * ||W||^2`` (None: 0.1 linear, 0.01 MLP); finetune: AdamW
            decay (None: 0).
        lora, lora_r, lora_alpha: LoRA adapters instead of a full fine-tune (finetune mode; peft on all linear
            layers, the score head trained in full and saved with the adapters). Its default ``lr`` is
            :data:`LORA_LR`.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        gpus: data-parallel processes for finetune mode (default 1). >1 trains with DDP through
            ``rm_engine.finetune.ddp.train_finetune_ddp`` (one process per GPU, NCCL; ``batch_tokens`` is per device). On a
            machine without CUDA (or with ``device="cpu"``) gpus > 1 runs gloo CPU processes, useful for tests only.
            Head mode refuses gpus > 1.
        grad_checkpointing: trade speed for memory in finetune mode.
        compile: ``torch.compile`` the finetune model (with ``packing``: the backbone once, ``dynamic=False``).
        packing: pack each batch into one row without padding, decoders only; static shape for torch.compile
            (finetune mode; ``rm_engine.finetune.packing``). The row is ``batch_tokens`` long, so a token budget is
            required; in one process batches are random pairs filling it with real tokens (up to
            ``max_batch_pairs``). With an encoder backbone training falls back to padded batches and logs a
            warning.
        packed_attention: the attention of packed rows on a GPU: ``"auto"`` (``varlen`` on CUDA when the model takes
            custom attention, else ``flex``; ``sdpa`` with a dense mask on CPU), ``"flex"`` (flex_attention with a sparse block mask), ``"varlen"`` (torch's own
            variable-length flash attention, ``rm_engine.finetune.varlen_attention``; CUDA), ``"sdpa"`` (dense mask, rows
            of at most 4,096 tokens). A model loaded with ``flash_attention_2`` keeps it.
        pooling: finetune mode, encoders: where the score is read. ``"auto"`` uses the pooling the backbone was
            trained with (mean for sentence-transformers folders that declare mean pooling, as the bundled MiniLM
            does; ``[CLS]`` otherwise); ``"cls"`` forces the first token through the model's pooler (TRL's
            choice); ``"mean"`` forces the masked mean of the last hidden states. Decoders always read the last
            real token. ``"rich"`` reads head mode's rich features (context + response, response and context
            embeddings, their products) with a linear layer of its own: three sequences per response, about 2.5x
            the compute; on HH-harmless within seed noise of mean pooling over three splits (0.616 vs 0.609 on
            CPU, BENCHMARKS.md), better on one split, worse on another. The pooling used
            is saved with the model.
        head_init: finetune mode: the new score head's start. ``"random"``: the model's own initialisation
            (TRL's); ``"probe"``: first fitted alone on the frozen backbone's features of the training pairs (a
            Bradley-Terry linear probe, then the full fine-tune: LP-FT; ``rm_engine.finetune.linear_probe``); ``"auto"``
            (default): ``probe`` with ``pooling="rich"`` (a 4 x hidden head from random is slow to find what the
            probe finds at once), ``random`` otherwise.
        features: head-mode features: ``"rich"`` (response, prompt+response and prompt embeddings, their
            difference and product) or ``"pair"`` (one mean-pooled prompt+response vector).
        quantize: int8 dynamic quantization of the backbone's linear layers for feature extraction (CPU).
        patience: head-mode early stopping: evaluations without validation improvement before stopping.
        length_covariate: the loss sees ``score + beta * length`` (each response's standardised log
            word count, ``beta`` learned per member), so the labels' length preference is absorbed by ``beta``
            instead of the score; the score alone is saved and served, and ``beta`` is reported in the
            training info. A guard against policies gaining reward by length (``metrics.length_bias`` measures
            it). Both modes (``rm_engine.length_covariate``), DDP included. It costs accuracy where
            the labels' learnable signal is mostly length (HH-harmless LoRA fine-tune: 0.610 -> 0.524; head
            mode: no cost; BENCHMARKS.md).
        annotator_weights: multiply each label's weight by its annotator's reliability, estimated from the pairs
            several annotators labelled (``rm_engine.quality.annotators``: Dawid-Skene accuracy ``p``, weight
            ``2p - 1`` relative to the typical annotator's, so the typical one keeps 1 and chance-level ones get
            0); annotators with too few overlapping labels keep 1. The weights are saved in the version's data
            snapshot.
    """

    mode: str = "head"
    backbone: str = "minilm"
    epochs: int | None = field(default=None, metadata=bounded(
        1, 1_000_000, integer=True, optional=True, help="passes over the training pairs (default: 300 head, 2 finetune)"))
    lr: float | None = field(default=None, metadata=bounded(
        0, 10, lo_open=True, optional=True, help=f"learning rate ({default_lrs_text()} with --lora)"))
    batch_size: int = field(default=16, metadata=bounded(
        1, 65_536, integer=True, help="pairs per step (finetune without a token budget)"))
    batch_tokens: int = field(default=16384, metadata=bounded(
        0, 1 << 24, integer=True, help="finetune token budget per batch (0 = use the batch size)"))
    max_batch_pairs: int = field(default=32, metadata=bounded(
        0, 1 << 20, integer=True, help="finetune: at most N pairs per token-budget batch (0 = the budget alone)"))
    max_length: int = field(default=256, metadata=bounded(
        8, 1 << 17, integer=True, help="tokens per (prompt, response) sequence"))
    ensemble: int = field(default=1, metadata=bounded(
        1, MAX_ENSEMBLE, integer=True, help="K members; scores carry their mean and std"))
    source_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SOURCE_WEIGHTS))
    sources: tuple[str, ...] | None = None
    ties: str = "model"
    tie_model: str = "davidson"
    margin_from_strength: float = field(default=0.0, metadata=bounded(
        0, 10, help="margin added per unit of label strength (0 = off)"))
    center_coef: float = field(default=0.0, metadata=bounded(
        0, 10, help="reward centering coefficient, coef * mean((r_c + r_r)^2) (TRL recommends 0.01; 0 = off)"))
    val_fraction: float = field(default=0.2, metadata=bounded(
        0, 0.9, hi_open=True, help="share of prompts held out for validation"))
    seed: int = field(default=0, metadata=bounded(0, 2**31 - 1, integer=True, help="seeds the split, initialisation and bootstrap"))
    head: str = "linear"
    weight_decay: float | None = field(default=None, metadata=bounded(
        0, 100, optional=True, help="head: L2 penalty (default 0.1 linear, 0.01 mlp); finetune: AdamW decay (default 0)"))
    lora: bool = False
    lora_r: int = field(default=16, metadata=bounded(1, 4096, integer=True, help="LoRA rank"))
    lora_alpha: int = field(default=32, metadata=bounded(1, 65_536, integer=True, help="LoRA alpha"))
    device: str = "auto"
    gpus: int = field(default=1, metadata=bounded(
        1, MAX_GPUS, integer=True,
        help="finetune: N data-parallel processes (DDP, one per GPU; gloo CPU processes without CUDA)"))
    grad_checkpointing: bool = False
    compile: bool = False
    packing: bool = False
    packed_attention: str = "auto"
    pooling: str = "auto"
    head_init: str = "auto"
    features: str = "rich"
    quantize: bool = False
    patience: int = field(default=30, metadata=bounded(
        1, 10**9, integer=True, help="head mode: evaluations without improvement before early stopping"))
    length_covariate: bool = False
    annotator_weights: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> FieldError:
            return FieldError(f"TrainConfig.{name}", why, getattr(self, name), field=name)

        choices = {
            "mode": ("head", "finetune"), "ties": ("model", "exclude"), "tie_model": ("davidson", "rao_kupper"),
            "head": ("linear", "mlp"), "device": ("auto", "cpu", "cuda"), "features": ("rich", "pair"),
            "pooling": ("auto", "cls", "mean", "rich"), "packed_attention": ("auto", "flex", "varlen", "sdpa"), "head_init": ("auto", "random", "probe"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise bad(name, f"must be one of {', '.join(allowed)}")
        if not isinstance(self.backbone, str) or not self.backbone.strip():
            raise bad("backbone", "must be minilm or a model folder")
        for name in sorted(_BOOLS):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be true or false")
        check_fields(self, lambda name: f"TrainConfig.{name}")  # every numeric field: finite and in range
        if self.gpus > 1 and self.mode != "finetune":
            raise bad("gpus", "more than 1 data-parallel process needs mode='finetune' (head mode trains in one process)")
        if self.packing and self.batch_tokens == 0:
            raise bad("packing", "needs a token budget: batch_tokens > 0 is the packed row length")
        try:
            object.__setattr__(self, "source_weights", parse_source_weights(self.source_weights))
        except FieldError as exc:  # one weight: name it and its value
            raise FieldError("TrainConfig.source_weights", f"{exc.label} {exc.reason}", exc.value,
                             field="source_weights") from None
        except ValueError as exc:
            raise bad("source_weights", str(exc)) from None
        if self.sources is not None:
            srcs = tuple(str(s).strip() for s in self.sources if str(s).strip())
            unknown = [s for s in srcs if s not in SOURCES]
            if unknown or not srcs:
                raise bad("sources", f"must be a non-empty subset of {', '.join(SOURCES)}")
            object.__setattr__(self, "sources", srcs)

    def resolved(self) -> TrainConfig:
        """A copy with the mode defaults filled in for ``epochs``, ``lr`` and ``weight_decay``."""
        d = dict(_MODE_DEFAULTS[self.mode], lr=default_lr(self.mode, self.lora))
        if self.mode == "head" and self.head == "mlp":
            d["weight_decay"] = 1e-2  # HH-harmless grid (BENCHMARKS.md): linear best at 0.1-1, MLP at 0.01
        return dataclasses.replace(
            self,
            epochs=self.epochs if self.epochs is not None else d["epochs"],
            lr=self.lr if self.lr is not None else d["lr"],
            weight_decay=self.weight_decay if self.weight_decay is not None else d["weight_decay"],
            head_init=self.head_init if self.head_init != "auto" else ("probe" if self.pooling == "rich" else "random"),
        )

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lists instead of tuples); ``from_dict(to_dict())`` round-trips."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, dict):
                v = dict(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, strict: bool = True) -> TrainConfig:
        """Build from ``to_dict()`` output (job params, stored versions). Unknown keys raise when ``strict``."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names - VERSION_KEYS)
        if unknown and strict:
            raise ValueError(f"TrainConfig: unknown field(s) {', '.join(unknown)}")
        kw = {k: v for k, v in data.items() if k in names}
        if kw.get("sources") is not None:
            s = kw["sources"]
            kw["sources"] = tuple(s.split(",")) if isinstance(s, str) else tuple(s)
        return cls(**kw)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> TrainConfig:
        """Defaults, then ``RMSTUDIO_TRAIN_<FIELD>`` variables (e.g. ``RMSTUDIO_TRAIN_MODE=finetune``), then
        ``overrides``."""
        env = os.environ if env is None else env
        kw: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            kw[f.name] = _parse_field(f.name, raw, ENV_PREFIX + f.name.upper())
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(kw)

    @classmethod
    def from_args(cls, args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
        """From parsed CLI arguments: attributes named like fields (``--batch-tokens`` -> ``batch_tokens``) that
        are not None override ``base`` (default: ``from_env()``)."""
        base = base or cls.from_env()
        d = base.to_dict()
        for f in fields(cls):
            v = getattr(args, f.name, None)
            if v is None:
                continue
            if f.name == "sources" and isinstance(v, str):
                v = [s for s in v.split(",") if s.strip()]
            elif f.name == "sources":
                v = [s2 for s in v for s2 in str(s).split(",") if s2.strip()]
            d[f.name] = v
        return cls.from_dict(d)


def check_queueable(cfg: TrainConfig, settings: Settings) -> TrainConfig:
    """Refuse now what the worker would refuse later when it runs ``cfg``: besides the fields (checked when ``cfg``
    was built), a backbone other than ``minilm`` must be a model folder under the allowed roots
    (``rm_engine.backbone.resolve_backbone``, the function the worker resolves it with; ``BackboneError`` naming the
    path). The CLI, the Train form and the retrain policy call this before storing a run."""
    from rm_engine.backbone import MINILM, resolve_backbone

    if cfg.backbone.strip().lower() != MINILM:  # minilm ships with the worker's install
        resolve_backbone(cfg.backbone, settings)
    return cfg


def policy_train_config(train_params: Mapping[str, Any], mode: str, settings: Settings | None = None) -> TrainConfig:
    """The ``TrainConfig`` an automatic retrain with the policy's ``train_params`` and ``mode`` runs (built as the
    worker builds it from the job's parameters: unknown fields and bad values named), checked with
    :func:`check_queueable` when ``settings`` are given."""
    cfg = TrainConfig.from_dict({**train_params, "mode": mode})
    return check_queueable(cfg, settings) if settings is not None else cfg


_BOOL = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
_BOOLS = {"lora", "grad_checkpointing", "compile", "packing", "quantize", "length_covariate", "annotator_weights"}


def parse_override(text: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` (a ``TrainConfig`` field, ``-`` or ``_`` between words, as in ``weight-decay=1``) -> the
    field's name and its parsed value; ``ValueError`` naming the text and the known fields otherwise."""
    name, sep, raw = text.partition("=")
    name = name.strip().lstrip("-").replace("-", "_")
    known = {f.name for f in fields(TrainConfig)}
    if not sep or name not in known:
        raise ValueError(f"{text!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(known))}")
    return name, _parse_field(name, raw.strip(), name)


def _parse_field(name: str, raw: str, var: str) -> Any:
    """Parse one text value for field ``name``, naming ``var`` (where it came from) on error."""
    bound = next((f.metadata["bound"] for f in fields(TrainConfig) if f.name == name and "bound" in f.metadata), None)
    if bound is not None:
        return bound.parse(raw, var, field=name)
    if name in _BOOLS:
        try:
            return _BOOL[raw.strip().lower()]
        except KeyError:
            raise FieldError(var, "must be true or false (1, 0, yes, no, on, off)", raw, field=name) from None
    if name == "sources":
        return [s for s in raw.split(",") if s.strip()]
    if name == "source_weights":
        return parse_source_weights(raw)
    return raw
