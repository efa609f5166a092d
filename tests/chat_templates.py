"""Chat templates of common model families, as their tokenizer configs ship them (Llama-2 chat,
Mistral-7B-Instruct v0.1, Qwen2's ChatML, Llama-3 instruct, Gemma), and a renderer that applies one as
transformers' ``apply_chat_template`` does. Written independently of RM Studio's built-in markups, so tests that
parse text rendered here check the parser against the real layouts."""
from __future__ import annotations

from typing import Any

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}")

FAMILIES = {  # template, bos, eos, whether it renders a system message, the markup that should read it
    "llama2": (LLAMA2, "<s>", "</s>", True, "inst"), "mistral": (MISTRAL, "<s>", "</s>", False, "inst"),
    "qwen2": (QWEN2, "", "<|im_end|>", True, "chatml"), "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", True,
                                                                   "llama3"),
    "gemma": (GEMMA, "<bos>", "<eos>", False, "gemma")}
QWEN2_DEFAULT_SYSTEM = "You are a helpful assistant."


def render(template: str, messages: list[dict[str, str]], *, bos: str = "", eos: str = "", gen: bool = True) -> str:
    """``template`` applied to ``messages`` as ``apply_chat_template(..., tokenize=False)`` applies it."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg: str) -> Any:
        raise ValueError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, bos_token=bos, eos_token=eos,
                                            add_generation_prompt=gen)


def render_family(family: str, messages: list[dict[str, str]], *, gen: bool = True) -> str:
    """``messages`` in ``family``'s layout (a key of :data:`FAMILIES`), with its bos and eos tokens."""
    template, bos, eos, _, _ = FAMILIES[family]
    return render(template, messages, bos=bos, eos=eos, gen=gen)
