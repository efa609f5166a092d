"""How sharding groups a model (``rm_engine.finetune.sharding``): every transformer layer of the Llama, Qwen2,
Mistral and BERT families is a group, and the layers and the top-level parts together cover every parameter,
LoRA included, so none is left to a root group (the gloo tests in ``tests/integration/test_ddp.py`` train
through these groups)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rm_engine.finetune.reward_net import RewardNet
from rm_engine.finetune.sharding import layer_modules, top_parts


def _model(family: str) -> tuple[nn.Module, bool]:
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
        MistralConfig,
        MistralForSequenceClassification,
        Qwen2Config,
        Qwen2ForSequenceClassification,
    )

    dec = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2, num_labels=1, pad_token_id=0)
    torch.manual_seed(0)
    if family == "bert":
        return BertForSequenceClassification(BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=3,
                                                        num_attention_heads=4, intermediate_size=64, num_labels=1)), False
    cls, cfg = {"llama": (LlamaForSequenceClassification, LlamaConfig),
                "qwen2": (Qwen2ForSequenceClassification, Qwen2Config),
                "mistral": (MistralForSequenceClassification, MistralConfig)}[family]
    return cls(cfg(**dec)), True


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "bert"])
def test_every_parameter_is_in_exactly_one_group(family: str, lora: bool) -> None:
    model, decoder = _model(family)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules="all-linear"))
    net = RewardNet(model, decoder, "last" if decoder else "cls")
    layers, parts = layer_modules(net), top_parts(net)
    assert sum(type(m).__name__.endswith("Layer") for m in layers) == 3  # BERT also names its embeddings
    assert not any(a is not b and any(m is b for m in a.modules()) for a in layers for b in layers)  # no nesting
    # FSDP gives each parameter to the innermost group around it: none may be left to a root group
    grouped = {id(p) for m in layers + parts for p in m.parameters()}
    assert grouped == {id(p) for p in net.parameters()}, "a parameter in no group"
    assert all(any(True for _ in m.parameters()) for m in parts)
