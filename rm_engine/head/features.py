"""Frozen-backbone features, computed once per text and cached on disk.

Cache layout: ``settings.cache_dir/features/<fingerprint>-<pooling>-L<max_length>[-q8]-<policy hash>/`` holds
shard files ``s-<uuid>.npz`` (arrays ``keys`` and ``vecs``). Each writer writes its own new shard to a temp name
and ``os.replace``\\ s it into place, so several processes and threads can extract at once without ever leaving a
half-written shard; a duplicate key in two shards is harmless. Beyond ``AUTO_COMPACT_SHARDS`` shards a write
merges the small ones into one, tiered (``rm_engine/head/cache_admin.py`` also reports, compacts and prunes caches). The key of a text is
the sha256 of what was embedded (the input kind, history, prompt and response), so every retrain reuses earlier work.

Extraction sorts texts by token length and pads each batch only to its own longest text (faster than random
batches; ``bench/cpu.py``, BENCHMARKS.md), runs under ``torch.inference_mode`` and can quantize the linear layers to
int8 (faster again on CPU; a separate cache, since the numbers differ slightly).

Features for a (prompt, response), ``features="rich"``: the L2-normalised mean-pooled embeddings of
the (context, response) pair ``e_pr``, of the response alone ``e_r`` and of the context alone ``e_p``, combined as
``[e_pr, e_r, e_p * e_r, e_p * e_pr]`` (the prompt alone would cancel out of a pairwise difference; its products do
not). ``features="pair"`` is just ``e_pr``.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from db.config import Settings
from rm_engine.backbone import (
    TRUNCATION_POLICY,
    BackboneRef,
    History,
    build_inputs,
    build_text_inputs,
    is_decoder,
    load_config,
    load_tokenizer,
    normalize_history,
    render_context,
)
from rm_engine.config import Cancelled
from rm_engine.finetune.reward_net import masked_mean
from rm_engine.head.cache_admin import compact

Progress = Callable[[dict[str, Any]], None] | None
StopCheck = Callable[[], bool] | None

AUTO_COMPACT_SHARDS = 64  # put_many merges a dir's shards into one beyond this many (rm_engine/head/cache_admin.py)


@dataclass(frozen=True)
class TextItem:
    """One thing to embed: ``kind`` is ``"pr"`` (context + response), ``"r"`` (response) or ``"p"`` (context)."""

    kind: str
    prompt: str
    history: tuple[tuple[str, str], ...]
    response: str

    @property
    def key(self) -> str:
        payload = json.dumps([self.kind, self.history, self.prompt if self.kind != "r" else "", self.response if self.kind != "p" else ""],
                             ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _hist(history: History) -> tuple[tuple[str, str], ...]:
    return tuple((m["role"], m["content"]) for m in normalize_history(history))


def items_for(prompt: str, history: History, response: str, features: str) -> list[TextItem]:
    """The texts to embed for one (prompt, response) under a feature recipe (``"rich"`` or ``"pair"``)."""
    h = _hist(history)
    pr = TextItem("pr", prompt, h, response)
    if features == "pair":
        return [pr]
    if features != "rich":
        raise ValueError(f"unknown feature recipe {features!r} (expected rich or pair)")
    return [pr, TextItem("r", "", (), response), TextItem("p", prompt, h, "")]


def item_ids(tokenizer: Any, item: TextItem, max_length: int, *, decoder: bool) -> list[int]:
    """The token ids of one item: context + response as the scorer builds them (``pr``), the response alone, cut
    on the right (``r``), or the context alone, cut on the left (``p``). Head mode embeds these; a fine-tune with
    ``pooling="rich"`` trains on them (``FinetunedModel.encode``)."""
    if item.kind == "pr":
        return build_inputs(tokenizer, item.prompt, item.history, item.response, max_length, decoder=decoder)
    if item.kind == "r":
        return build_text_inputs(tokenizer, item.response, max_length, cut="right")
    return build_text_inputs(tokenizer, render_context(item.prompt, item.history), max_length, cut="left")


def combine(features: str, vecs: Sequence[np.ndarray]) -> np.ndarray:
    """Assemble one feature matrix from the per-kind embeddings returned for :func:`items_for` (row-aligned)."""
    if features == "pair":
        return np.asarray(vecs[0], dtype=np.float32)
    e_pr, e_r, e_p = (np.asarray(v, dtype=np.float32) for v in vecs)
    return np.concatenate([e_pr, e_r, e_p * e_r, e_p * e_pr], axis=-1)


class FeatureCache:
    """Embeddings on disk for one (backbone fingerprint, pooling, max_length, quantization); thread- and
    process-safe."""

    def __init__(self, settings: Settings, ref: BackboneRef, *, max_length: int, pooling: str = "mean", quantize: bool = False) -> None:
        policy = hashlib.sha256(TRUNCATION_POLICY.encode()).hexdigest()[:8]
        name = f"{ref.fingerprint}-{pooling}-L{max_length}{'-q8' if quantize else ''}-{policy}"
        self.dir = Path(settings.cache_dir) / "features" / name
        self._lock = threading.Lock()
        self._mem: dict[str, np.ndarray] = {}
        self._seen: set[str] = set()

    def _refresh(self) -> None:
        # A shard that vanished between glob and load was merged by a compactor, which wrote the merged shard
        # before deleting it: another pass finds its keys there.
        for _ in range(3):
            if not self._refresh_pass():
                return

    def _refresh_pass(self) -> bool:
        """Load the shards not seen yet; True when one vanished before it could be read (it stays unseen)."""
        if not self.dir.is_dir():
            return False
        vanished = False
        for p in sorted(self.dir.glob("s-*.npz")):
            if p.name in self._seen:
                continue
            try:
                with np.load(p, allow_pickle=False) as z:
                    keys, vecs = z["keys"], z["vecs"]
            except FileNotFoundError:
                vanished = True
                continue
            except (OSError, ValueError, KeyError):  # a damaged shard is ignored (and recomputed)
                self._seen.add(p.name)
                continue
            for k, v in zip(keys.tolist(), vecs):
                self._mem.setdefault(str(k), v)
            self._seen.add(p.name)
        return vanished

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``keys``."""
        with self._lock:
            if any(k not in self._mem for k in keys):
                self._refresh()
            return {k: self._mem[k] for k in keys if k in self._mem}

    def put_many(self, keys: Sequence[str], vecs: np.ndarray) -> Path | None:
        """Write one new shard atomically (temp file, fsync, ``os.replace``); beyond ``AUTO_COMPACT_SHARDS``
        shards, merge the dir's small shards into one (tiered: large shards are left alone until the small ones
        add up to a quarter of them; the returned shard may then be merged away already)."""
        if not len(keys):
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"s-{uuid.uuid4().hex}.npz"
        tmp = self.dir / f".tmp-{name}"
        arr_keys = np.array(list(keys), dtype="U64")
        with open(tmp, "wb") as f:
            np.savez(f, keys=arr_keys, vecs=np.asarray(vecs, dtype=np.float32))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / name)
        with self._lock:
            for k, v in zip(keys, np.asarray(vecs, dtype=np.float32)):
                self._mem.setdefault(k, v)
            self._seen.add(name)
        if len(list(self.dir.glob("s-*.npz"))) > AUTO_COMPACT_SHARDS:
            try:
                compact(self.dir, tiered=True)
            except OSError:  # maintenance only: the shard is written, the next put_many tries again
                pass
        return self.dir / name

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._mem)


def quantize_int8(model: Any) -> Any:
    """int8 dynamic quantization of the linear layers (CPU inference); the model unchanged where unsupported."""
    import warnings

    import torch

    try:
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():  # torch 2.13 deprecates torch.ao quantization in favour of torchao
            warnings.simplefilter("ignore")
            return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    except Exception:  # noqa: BLE001  (a build without quantized kernels)
        return model


class FeatureExtractor:
    """Embeds :class:`TextItem` s with a frozen backbone, through the cache."""

    def __init__(
        self,
        settings: Settings,
        ref: BackboneRef,
        *,
        max_length: int = 256,
        pooling: str = "mean",
        quantize: bool = False,
        batch_size: int = 32,
        device: str = "cpu",
        sort_by_length: bool = True,
        shard_size: int = 512,
    ) -> None:
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be mean or last, got {pooling!r}")
        self.settings, self.ref = settings, ref
        self.max_length, self.pooling, self.quantize = max_length, pooling, quantize
        self.batch_size, self.device, self.sort_by_length, self.shard_size = batch_size, device, sort_by_length, shard_size
        self.cache = FeatureCache(settings, ref, max_length=max_length, pooling=pooling, quantize=quantize)
        self._model: Any = None
        self._decoder: bool | None = None
        self._lock = threading.Lock()

    @property
    def decoder(self) -> bool:
        if self._decoder is None:
            self._decoder = is_decoder(load_config(self.ref))
        return self._decoder

    @property
    def tokenizer(self) -> Any:
        return load_tokenizer(self.ref, decoder=self.decoder)

    def model(self) -> Any:
        """The frozen backbone in eval mode (loaded once, from safetensors only)."""
        with self._lock:
            if self._model is None:
                from transformers import AutoModel

                m = AutoModel.from_pretrained(str(self.ref.path), local_files_only=True, use_safetensors=True)
                m.eval()
                if self.quantize and self.device == "cpu":
                    m = quantize_int8(m)
                self._model = m.to(self.device)
            return self._model

    def token_ids(self, item: TextItem) -> list[int]:
        """The ids embedded for an item (same truncation policy as scoring and fine-tuning)."""
        return item_ids(self.tokenizer, item, self.max_length, decoder=self.decoder)

    @property
    def dim(self) -> int:
        return int(load_config(self.ref).hidden_size)

    def embed_ids(self, seqs: Sequence[Sequence[int]], *, progress: Progress = None, should_stop: StopCheck = None,
                  on_batch: Callable[[list[int], np.ndarray], None] | None = None) -> np.ndarray:
        """Pooled, L2-normalised embeddings of token-id sequences (no cache), ``(n, hidden)`` float32."""
        import torch


        n = len(seqs)
        out = np.zeros((n, self.dim), dtype=np.float32)
        order = sorted(range(n), key=lambda i: len(seqs[i])) if self.sort_by_length else list(range(n))
        model = self.model()
        pad_id = self.tokenizer.pad_token_id or 0
        done = 0
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                if should_stop is not None and should_stop():
                    raise Cancelled("feature extraction cancelled")
                idx = order[start:start + self.batch_size]
                longest = max(len(seqs[i]) for i in idx)
                ids = torch.full((len(idx), longest), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), longest), dtype=torch.long)
                for row, i in enumerate(idx):
                    s = seqs[i]
                    ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
                    mask[row, : len(s)] = 1
                hidden = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state.float()
                if self.pooling == "mean":
                    pooled = masked_mean(hidden, mask.to(hidden.device))
                else:  # last non-pad token (right padding)
                    last = mask.sum(1).clamp(min=1) - 1
                    pooled = hidden[torch.arange(len(idx)), last.to(hidden.device)]
                pooled = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
                out[idx] = pooled
                if on_batch is not None:
                    on_batch(idx, pooled)
                done += len(idx)
                if progress is not None:
                    progress({"phase": "features", "step": done, "total": n})
        return out

    def embed(self, items: Sequence[TextItem], *, progress: Progress = None, should_stop: StopCheck = None,
              use_cache: bool = True) -> np.ndarray:
        """Embeddings of ``items`` (row-aligned), computing and caching only the missing ones (``use_cache=False``:
        compute everything, read and write nothing)."""
        if not use_cache:
            if not items:
                return np.zeros((0, self.dim), dtype=np.float32)
            return self.embed_ids([self.token_ids(it) for it in items], progress=progress, should_stop=should_stop)
        keys = [it.key for it in items]
        found = self.cache.get_many(list(dict.fromkeys(keys)))
        missing: dict[str, TextItem] = {}
        for k, it in zip(keys, items):
            if k not in found and k not in missing:
                missing[k] = it
        if missing:
            mkeys = list(missing)
            seqs = [self.token_ids(missing[k]) for k in mkeys]
            pending_k: list[str] = []
            pending_v: list[np.ndarray] = []

            def flush() -> None:
                if pending_k:
                    self.cache.put_many(list(pending_k), np.stack(pending_v))
                    pending_k.clear()
                    pending_v.clear()

            def on_batch(idx: list[int], vecs: np.ndarray) -> None:
                for i, v in zip(idx, vecs):
                    pending_k.append(mkeys[i])
                    pending_v.append(v)
                if len(pending_k) >= self.shard_size:
                    flush()

            try:
                vecs = self.embed_ids(seqs, progress=progress, should_stop=should_stop, on_batch=on_batch)
            finally:
                flush()  # work done before a cancel or an error is kept
            found.update(zip(mkeys, vecs))
        elif progress is not None:
            progress({"phase": "features", "step": len(items), "total": len(items)})
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32)

    def features_for(self, rows: Sequence[tuple[str, History, str]], features: str = "rich", *,
                     progress: Progress = None, should_stop: StopCheck = None, use_cache: bool = True) -> np.ndarray:
        """Feature matrix for (prompt, history, response) rows under a recipe (see the module docstring)."""
        per_row = [items_for(p, h, r, features) for p, h, r in rows]
        k = 1 if features == "pair" else 3
        flat = [it for its in per_row for it in its]
        if not use_cache:  # the context embedding is shared by all responses to one prompt: compute it once
            uniq = list({it.key: it for it in flat}.values())
            pos = {it.key: i for i, it in enumerate(uniq)}
            u = self.embed(uniq, progress=progress, should_stop=should_stop, use_cache=False)
            emb = u[[pos[it.key] for it in flat]] if flat else u
        else:
            emb = self.embed(flat, progress=progress, should_stop=should_stop)
        if not rows:
            return np.zeros((0, self.dim * (1 if features == "pair" else 4)), dtype=np.float32)
        emb = emb.reshape(len(rows), k, -1)
        return combine(features, [emb[:, j] for j in range(k)])
