"""Chat markup parsed back into messages: the model families' own templates (as their tokenizer configs ship them),
a template file or tokenizer folder given by the user, and templates that cannot be parsed refused with the reason."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rm_engine.serving.chat_markup import BUILTIN, MarkupError, builtin, default_markups, load_markup, parse_chat
from tests.chat_templates import FAMILIES, QWEN2, QWEN2_DEFAULT_SYSTEM, render, render_family

DIALOGUE = [{"role": "user", "content": "Hi there!"}, {"role": "assistant", "content": "Hello. What do you need?"},
            {"role": "user", "content": "Two lines:\nfirst, then second."}]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_familys_own_template_is_read_back_into_its_messages(family: str) -> None:
    _, _, eos, has_system, reader = FAMILIES[family]
    messages = ([{"role": "system", "content": "Be brief."}] if has_system else []) + DIALOGUE
    found = parse_chat(render_family(family, messages), default_markups())
    assert found is not None and found[0].name == reader
    assert found[1] == [*messages, {"role": "assistant", "content": ""}]  # the generation prompt: an open turn
    # a whole dialogue ending in the response, as an OpenRLHF query holds it, padded
    full = render_family(family, [*messages, {"role": "assistant", "content": "Sure: one, two."}], gen=False)
    assert parse_chat(f"{eos}{eos}{full}{eos}{eos}", default_markups())[1] == [
        *messages, {"role": "assistant", "content": "Sure: one, two."}]


def test_qwen2s_default_system_message_is_part_of_the_conversation() -> None:
    found = parse_chat(render(QWEN2, DIALOGUE[:1], eos="<|im_end|>"), default_markups())
    assert found[1][0] == {"role": "system", "content": QWEN2_DEFAULT_SYSTEM}


@pytest.mark.parametrize("text", ["What is 2+2?", "User: hi\n\nAssistant:", "see [INST] in the docs",
                                  "<|im_start|> is a token", ""])
def test_plain_text_is_not_markup(text: str) -> None:
    assert parse_chat(text, default_markups()) is None


def test_a_template_file_or_a_tokenizer_folder_is_learnt(tmp_path: Path) -> None:
    template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
                "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    (tmp_path / "zephyr.jinja").write_text(template)
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": template, "bos_token": {"content": "<|startoftext|>"}, "eos_token": "<|stop|>"}))
    text = "<|startoftext|><|system|>\nBe brief.<|stop|>\n<|user|>\nhi<|stop|>\n<|assistant|>\nyo<|stop|><|stop|>"
    want = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"}]
    assert parse_chat(text, (load_markup(str(folder)),))[1] == want  # its bos and eos are known as tokens
    from_file = load_markup(str(tmp_path / "zephyr.jinja"))
    assert from_file.parse(text.replace("<|startoftext|>", "").replace("<|stop|>", "")) == want


@pytest.mark.parametrize("spec,message", [
    ("vicuna", "unknown chat template 'vicuna': use one of inst, chatml, llama3, gemma"),
    ("{{ messages | map(attribute='content') | join(' ') }}", None),
])
def test_templates_that_cannot_be_read_are_refused_with_the_reason(tmp_path: Path, spec: str,
                                                                   message: str | None) -> None:
    if message is None:  # contents joined by spaces: nothing tells the messages apart
        (tmp_path / "joined.jinja").write_text(spec)
        spec, message = str(tmp_path / "joined.jinja"), "is only whitespace, so messages cannot be told apart"
    with pytest.raises(MarkupError, match=message):
        load_markup(spec)


def test_built_in_names_and_aliases() -> None:
    assert BUILTIN == ("inst", "chatml", "llama3", "gemma")
    assert builtin("Mistral") is builtin("llama2") is builtin("inst") and builtin("qwen").name == "chatml"
