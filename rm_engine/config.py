"""``TrainConfig``: every knob of a training run, frozen, JSON-safe, saved with every model version.

Each field is described once, in its metadata: its help text, its rule (a numeric range, a fixed set of words or a
switch: ``db.bounds``), the mode it belongs to (``mode="head"`` or ``"finetune"``; none for the options of both
modes) and, for the fields the Train form offers, a :class:`FormSpec`. The command line's flags
(``cli.model_cmds.train_flags``), the ``FIELD=VALUE`` parser (:func:`parse_override`: ``rmstudio cv --vs``,
``rmstudio policy --train-param``), the ``RMSTUDIO_TRAIN_<FIELD>`` variables (:meth:`TrainConfig.from_env`) and the
Train form (``app.config_form``) are all built from it. The values a field left at None takes in each mode are
stated once, in :data:`MODE_DEFAULTS`.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from db.bounds import Bound, FieldError, bounded, check_fields, choice, rule_of, switch
from db.config import Settings
from rm_engine.backbone import MINILM, resolve_backbone

SOURCES = ("expert", "crowd", "ai")
DEFAULT_SOURCE_WEIGHTS: dict[str, float] = {"expert": 1.0, "crowd": 0.8, "ai": 0.5}
#: A source's loss weight (``TrainConfig.source_weights`` values).
SOURCE_WEIGHT = Bound(0, 100)
#: Cross-validation folds (``rmstudio cv --folds``, the Train page, cv jobs): here, so that the CLI can offer the
#: range without importing the training code.
MIN_FOLDS, MAX_FOLDS = 2, 20
MAX_ENSEMBLE = 64
MAX_GPUS = 64
#: How ``gpus > 1`` processes split the work (``TrainConfig.strategy``; rm_engine.finetune.sharding).
STRATEGIES = ("ddp", "fsdp", "fsdp-offload")
ENV_PREFIX = "RMSTUDIO_TRAIN_"
# How several versions combine into one reward (rm_engine.serving.ensemble); here so that the CLI can offer the
# choices without importing numpy.
COMBINE = ("mean", "min", "uwo")
# Keys a model version's stored config carries besides the fields (``from_dict`` accepts and ignores them).
VERSION_KEYS = frozenset({"truncation"})
#: The training modes, and the options of each in words (``field(metadata=...)``'s ``mode``).
MODES = {"head": "head mode", "finetune": "fine-tune mode"}


class Cancelled(Exception):
    """Raised by training, feature extraction and rescoring when ``should_stop()`` turns true; nothing is
    published then. (Re-exported by ``rm_engine.training``.)"""


#: What a field left at None becomes in each mode (``TrainConfig.resolved``), the one statement of these defaults.
#: ``"finetune+lora"`` applies with LoRA adapters, ``"head+mlp"`` to MLP heads. LoRA adapters start at zero and move
#: only through their low-rank factors: at the full fine-tune's 2e-5 a MiniLM LoRA run on HH-harmless stayed at
#: chance (0.498 held out), 2e-4 is the best of 2e-5/1e-4/2e-4/5e-4 there; the HH-harmless weight-decay grid put
#: linear heads best at 0.1-1 and MLP heads at 0.01 (BENCHMARKS.md, "LoRA" and the head grid).
MODE_DEFAULTS: dict[str, dict[str, float]] = {
    "epochs": {"head": 300, "finetune": 2},
    "lr": {"head": 3e-3, "finetune": 2e-5, "finetune+lora": 2e-4},
    "weight_decay": {"head": 0.1, "head+mlp": 0.01, "finetune": 0.0},
}
_VARIANT_WORDS = {"head": "head", "head+mlp": "MLP head", "finetune": "fine-tune", "finetune+lora": "LoRA"}


def mode_default(name: str, mode: str, *, lora: bool = False, head: str = "linear") -> Any:
    """The value field ``name`` (a key of :data:`MODE_DEFAULTS`) takes when left at None in a run of ``mode``."""
    table = MODE_DEFAULTS[name]
    variants = [f"{mode}+lora"] * lora + [f"{mode}+{head}", mode]
    return table[next(v for v in variants if v in table)]


def default_lr(mode: str, lora: bool = False) -> float:
    """The learning rate a run of ``mode`` gets when ``TrainConfig.lr`` is None."""
    return float(mode_default("lr", mode, lora=lora))


def defaults_text(name: str) -> str:
    """A field's mode defaults in words, for help texts (``"default: 0.003 head, 2e-05 fine-tune, 0.0002 LoRA"``)."""
    return "default: " + ", ".join(f"{v:g} {_VARIANT_WORDS[k]}" for k, v in MODE_DEFAULTS[name].items())


def default_lrs_text() -> str:
    """The default learning rates in words (:func:`defaults_text` of ``lr``)."""
    return defaults_text("lr")


@dataclass(frozen=True)
class FormSpec:
    """How the Train form offers a field: its ``label``, its ``section`` (``"main"``: always in view; ``"more"``: in
    the expander) and, for numbers, the widget's ``step`` and upper end ``hi`` where they differ from the field's
    range (``"{}"`` in the label of a per-source field is the source)."""

    label: str
    section: str = "main"
    step: float | None = None
    hi: float | None = None


def _text(help: str, **extra: Any) -> dict[str, Any]:
    """Metadata of a field without a rule of ``db.bounds`` (checked in ``__post_init__``)."""
    return {"help": help, **extra}


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


_HEAD, _FT = {"mode": "head"}, {"mode": "finetune"}


@dataclass(frozen=True)
class TrainConfig:
    """One training run: the options of both modes, then head mode's and fine-tune mode's (each field's ``mode``).

    Each field's meaning is its ``help`` (listed below, shown by ``rmstudio train --help`` and the Train form).
    """

    # ---- both modes
    mode: str = field(default="head", metadata=choice(
        *MODES, form=FormSpec("Mode"),
        help="head: a linear or MLP head on the frozen backbone's cached features (fast on CPU); finetune: the "
             "whole backbone (or LoRA adapters) with a scalar head (GPU; rm_engine.finetune.train)"))
    backbone: str = field(default="minilm", metadata=_text(
        "minilm (the bundled MiniLM-L6) or a local Hugging Face model folder under RMSTUDIO_HOME or "
        "RMSTUDIO_MODEL_DIRS", metavar="minilm|PATH", form=FormSpec("Backbone")))
    epochs: int | None = field(default=None, metadata=bounded(
        1, 1_000_000, integer=True, optional=True, metavar="N", form=FormSpec("Epochs"),
        help=f"passes over the training pairs ({defaults_text('epochs')}); head mode stops early when the "
             "validation loss stops improving"))
    lr: float | None = field(default=None, metadata=bounded(
        0, 10, lo_open=True, optional=True, metavar="LR", form=FormSpec("Learning rate", "more", step=1e-5),
        help=f"learning rate ({defaults_text('lr')})"))
    max_length: int = field(default=256, metadata=bounded(
        8, 1 << 17, integer=True, metavar="N",
        help="tokens per (prompt, response) sequence; truncation keeps the response and cuts the prompt from the "
             "left"))
    ensemble: int = field(default=1, metadata=bounded(
        1, MAX_ENSEMBLE, integer=True, metavar="K", form=FormSpec("Ensemble size"),
        help="K members, each with its own seed and bootstrap resample of the training pairs; scores carry the "
             "members' mean and std (each member centred first: its offset is arbitrary)"))
    source_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SOURCE_WEIGHTS), metadata=_text(
        "loss weight of each label source; unnamed sources keep their defaults (expert=1, crowd=0.8, ai=0.5)",
        metavar="expert=1,crowd=0.8,ai=0.5", weights_of=SOURCES,
        form=FormSpec("Weight of {} labels", "more", step=0.05, hi=2.0)))
    sources: tuple[str, ...] | None = field(default=None, metadata=_text(
        "train only on labels of these sources, e.g. expert,crowd (default: all)", metavar="SOURCES",
        subset_of=SOURCES, form=FormSpec("Train on sources", "more")))
    ties: str = field(default="model", metadata=choice(
        "model", "exclude",
        help="model: tie labels train through the tie model with a learned tie parameter; exclude: they are "
             "left out"))
    tie_model: str = field(default="davidson", metadata=choice(
        "davidson", "rao_kupper", help="the tie model: Davidson (1970) or Rao-Kupper (1967)"))
    margin_from_strength: float = field(default=0.0, metadata=bounded(
        0, 10, metavar="X", help="margin added per unit of label strength (1 slightly, 2 clearly better); 0 = off"))
    center_coef: float = field(default=0.0, metadata=bounded(
        0, 10, metavar="X",
        help="reward centring, coef * mean((r_c + r_r)^2) over each batch's pairs, on the scores alone (TRL "
             "recommends 0.01); 0 = off"))
    val_fraction: float = field(default=0.2, metadata=bounded(
        0, 0.9, hi_open=True, metavar="X",
        help="share of prompts held out for validation (whole prompts, chosen by a hash seeded with --seed)"))
    seed: int = field(default=0, metadata=bounded(
        0, 2**31 - 1, integer=True, metavar="N", help="seeds the split, initialisation and bootstrap"))
    weight_decay: float | None = field(default=None, metadata=bounded(
        0, 100, optional=True, metavar="X",
        help=f"head mode: L2 penalty wd * ||W||^2; fine-tune: AdamW decay ({defaults_text('weight_decay')})"))
    device: str = field(default="auto", metadata=choice(
        "auto", "cpu", "cuda", help="where training runs: auto (CUDA when torch sees a GPU), cpu or cuda"))
    length_covariate: bool = field(default=False, metadata=switch(
        form=FormSpec("Absorb length preference", "more"),
        help="the loss sees score + beta x length (each response's standardised log word count, beta learned per "
             "member), so the labels' length preference goes to beta and the saved and served score is the "
             "model's alone: a policy cannot gain reward by padding or cutting its answers (metrics.length_bias "
             "measures it). It costs accuracy where the labels' learnable signal is mostly length (HH-harmless LoRA "
             "fine-tune: 0.610 -> 0.524; head mode: no cost; BENCHMARKS.md)"))
    annotator_weights: bool = field(default=False, metadata=switch(
        form=FormSpec("Weight by annotator reliability", "more"),
        help="multiply each label's weight by its annotator's reliability, estimated from the pairs several "
             "annotators labelled (Dawid-Skene accuracy p, weight 2p - 1 relative to the typical annotator's; "
             "annotators with too little overlap keep 1; rm_engine.quality.annotators)"))
    # ---- head mode
    head: str = field(default="linear", metadata=choice(
        "linear", "mlp", help="the head on the cached features: linear or a small MLP", **_HEAD))
    features: str = field(default="rich", metadata=choice(
        "rich", "pair", **_HEAD,
        help="rich: response, prompt+response and prompt embeddings, their difference and product; pair: one "
             "mean-pooled prompt+response vector"))
    quantize: bool = field(default=False, metadata=switch(
        help="int8 dynamic quantization of the backbone's linear layers for feature extraction (CPU)", **_HEAD))
    patience: int = field(default=30, metadata=bounded(
        1, 10**9, integer=True, metavar="N", help="evaluations without validation improvement before early stopping",
        **_HEAD))
    # ---- fine-tune mode
    batch_size: int = field(default=16, metadata=bounded(
        1, 65_536, integer=True, metavar="N", help="pairs per step when batch_tokens is 0", **_FT))
    batch_tokens: int = field(default=16384, metadata=bounded(
        0, 1 << 24, integer=True, metavar="N",
        help="token budget per batch (chosen + rejected rows of similar length; per device with gpus > 1); "
             "0 = batches of batch_size pairs", **_FT))
    max_batch_pairs: int = field(default=32, metadata=bounded(
        0, 1 << 20, integer=True, metavar="N",
        help="at most N pairs per token-budget batch (0 = the budget alone): small datasets need enough optimizer "
             "steps (TRL uses 8 pairs per step; a 16k budget alone packs ~50 short pairs)", **_FT))
    lora: bool = field(default=False, metadata=switch(
        form=FormSpec("LoRA adapters", "more"),
        help="LoRA adapters (peft, on all linear layers) and the score head, trained in full and saved with them, "
             "instead of every weight; a learning rate of its own (see lr)", **_FT))
    lora_r: int = field(default=16, metadata=bounded(1, 4096, integer=True, metavar="R", help="LoRA rank", **_FT))
    lora_alpha: int = field(default=32, metadata=bounded(
        1, 65_536, integer=True, metavar="ALPHA", help="LoRA alpha", **_FT))
    gpus: int = field(default=1, metadata=bounded(
        1, MAX_GPUS, integer=True, metavar="N",
        help="data-parallel processes (DDP, one per GPU, NCCL; gloo CPU processes without CUDA, for tests); a "
             "queued run without it takes the worker's --gpus", **_FT))
    strategy: str = field(default="ddp", metadata=choice(
        *STRATEGIES, **_FT,
        help="how gpus > 1 processes split the work. ddp: every GPU holds the whole model, its gradients and "
             "optimizer state (fastest when that fits); fsdp: the three are sharded across the GPUs, each layer "
             "gathered only while it runs (FSDP2: a full fine-tune of a 7B model, ~16 bytes per parameter, "
             "needs this); fsdp-offload: the shards and the optimizer step stay in CPU memory (slower, least GPU "
             "memory). `rmstudio plan-memory` shows what each needs per GPU"))
    grad_checkpointing: bool = field(default=False, metadata=switch(
        help="gradient checkpointing: less memory, slower (on one GPU it is also turned on when a probe step on the "
             "heaviest batch runs out of memory)", **_FT))
    compile: bool = field(default=False, metadata=switch(
        help="torch.compile the model (with packing: the backbone once, for the packed row's static shape)", **_FT))
    packing: bool = field(default=False, metadata=switch(
        help="decoders only: each batch packed into one row of batch_tokens without padding (static shape for "
             "torch.compile; in one process random pairs fill the row with real tokens, up to max_batch_pairs); "
             "encoders fall back to padded batches, with a warning; rm_engine.finetune.packing", **_FT))
    packed_attention: str = field(default="auto", metadata=choice(
        "auto", "flex", "varlen", "sdpa", **_FT,
        help="with packing: the packed rows' attention. auto: varlen on CUDA when the model takes custom attention, "
             "else flex (a dense sdpa mask on CPU); flex: flex_attention with a sparse block mask; varlen: torch's "
             "variable-length flash attention (CUDA); sdpa: a dense mask, rows of at most 4,096 tokens. A model "
             "loaded with flash_attention_2 keeps it"))
    pooling: str = field(default="auto", metadata=choice(
        "auto", "cls", "mean", "rich", **_FT, form=FormSpec("Fine-tune score reads", "more"),
        help="encoders: where the score is read. auto: the backbone's own pooling (mean for sentence-transformers "
             "folders that declare it, as MiniLM does; [CLS] otherwise); cls: the first token through the model's "
             "pooler (TRL's choice); mean: the masked mean of the last hidden states; rich: head mode's features "
             "of prompt+response, response and prompt with a linear layer of its own (about 2.5x the compute; on "
             "HH-harmless within seed noise of mean pooling, BENCHMARKS.md). Decoders always read the last real "
             "token. The pooling used is saved with the model"))
    head_init: str = field(default="auto", metadata=choice(
        "auto", "random", "probe", **_FT,
        help="the new score head's start. random: the model's own initialisation (TRL's); probe: first fitted "
             "alone on the frozen backbone's features of the training pairs (a Bradley-Terry linear probe, then the "
             "full fine-tune: LP-FT); auto: probe with pooling rich, random otherwise"))

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> FieldError:
            return FieldError(f"TrainConfig.{name}", why, getattr(self, name), field=name)

        check_fields(self, lambda name: f"TrainConfig.{name}")  # choices, switches, numbers finite and in range
        if not isinstance(self.backbone, str) or not self.backbone.strip():
            raise bad("backbone", "must be minilm or a model folder")
        if self.gpus > 1 and self.mode != "finetune":
            raise bad("gpus", "more than 1 data-parallel process needs mode='finetune' (head mode trains in one process)")
        if self.strategy != "ddp" and self.mode != "finetune":
            raise bad("strategy", "sharding needs mode='finetune' (head mode trains in one process)")
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
        """A copy with the mode defaults (:data:`MODE_DEFAULTS`) filled in for the fields left at None, and
        ``head_init="auto"`` decided."""
        fill = {name: getattr(self, name) if getattr(self, name) is not None else
                mode_default(name, self.mode, lora=self.lora, head=self.head) for name in MODE_DEFAULTS}
        head_init = self.head_init if self.head_init != "auto" else ("probe" if self.pooling == "rich" else "random")
        return dataclasses.replace(self, **fill, head_init=head_init)

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
        """Build from ``to_dict()`` output (job params, stored versions; a field missing from an older one keeps its
        default). Unknown keys raise when ``strict``."""
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
        """Defaults, then ``RMSTUDIO_TRAIN_<FIELD>`` variables (e.g. ``RMSTUDIO_TRAIN_MODE=finetune``; values as
        :func:`parse_field` reads them), then ``overrides``."""
        env = os.environ if env is None else env
        kw: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(env_var(f.name))
            if raw is None or raw == "":
                continue
            kw[f.name] = parse_field(f.name, raw, env_var(f.name))
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


def field_mode(f: dataclasses.Field) -> str | None:  # type: ignore[type-arg]
    """The mode whose option ``f`` is (``"head"``, ``"finetune"``), None for the options of both modes."""
    return f.metadata.get("mode")


def form_fields() -> list[tuple[dataclasses.Field, FormSpec]]:  # type: ignore[type-arg]
    """The fields the Train form offers, in declaration order, each with its :class:`FormSpec`."""
    return [(f, f.metadata["form"]) for f in fields(TrainConfig) if "form" in f.metadata]


def env_var(name: str) -> str:
    """The environment variable of field ``name`` (``RMSTUDIO_TRAIN_<NAME>``)."""
    return ENV_PREFIX + name.upper()


def _document(cls: type) -> None:
    """Append each field's help (its metadata) to the class docstring, grouped by mode."""
    groups: dict[str | None, list[str]] = {}
    for f in fields(cls):
        groups.setdefault(field_mode(f), []).append(f"        {f.name}: {f.metadata.get('help', '')}")
    parts = [f"\n    {MODES[m].capitalize() if m else 'Both modes'}:\n" + "\n".join(lines) for m, lines in groups.items()]
    cls.__doc__ = (cls.__doc__ or "") + "".join(parts) + "\n"


_document(TrainConfig)


def check_queueable(cfg: TrainConfig, settings: Settings) -> TrainConfig:
    """Refuse now what the worker would refuse later when it runs ``cfg``: besides the fields (checked when ``cfg``
    was built), a backbone other than ``minilm`` must be a model folder under the allowed roots
    (``rm_engine.backbone.resolve_backbone``, the function the worker resolves it with; ``BackboneError`` naming the
    path). The CLI, the Train form and the retrain policy call this before storing a run."""

    if cfg.backbone.strip().lower() != MINILM:  # minilm ships with the worker's install
        resolve_backbone(cfg.backbone, settings)
    return cfg


def policy_train_config(train_params: Mapping[str, Any], mode: str, settings: Settings | None = None) -> TrainConfig:
    """The ``TrainConfig`` an automatic retrain with the policy's ``train_params`` and ``mode`` runs (built as the
    worker builds it from the job's parameters: unknown fields and bad values named), checked with
    :func:`check_queueable` when ``settings`` are given."""
    cfg = TrainConfig.from_dict({**train_params, "mode": mode})
    return check_queueable(cfg, settings) if settings is not None else cfg


def parse_override(text: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` (a ``TrainConfig`` field, ``-`` or ``_`` between words, as in ``weight-decay=1``) -> the
    field's name and its parsed value (:func:`parse_field`); ``ValueError`` naming the text and the known fields
    otherwise."""
    name, sep, raw = text.partition("=")
    name = name.strip().lstrip("-").replace("-", "_")
    known = {f.name for f in fields(TrainConfig)}
    if not sep or name not in known:
        raise ValueError(f"{text!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(known))}")
    return name, parse_field(name, raw.strip(), name)


def parse_field(name: str, raw: str, label: str) -> Any:
    """One text value (a flag, an environment variable, ``FIELD=VALUE``) for field ``name`` -> its value, by the
    field's rule; a :class:`FieldError` naming ``label`` (where the text came from) when the rule refuses it."""
    f = next(f for f in fields(TrainConfig) if f.name == name)
    rule = rule_of(f)
    if rule is not None:
        return rule.parse(raw, label, field=name)
    if name == "sources":
        return [s.strip() for s in raw.split(",") if s.strip()]
    if name == "source_weights":
        return parse_source_weights(raw)
    return raw.strip()
