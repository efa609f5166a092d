"""What an exported model reads from its input (``rm_engine/versions/export_modeling.py``, the folder's remote code) equals
what RM Studio builds (``rm_engine/backbone.py``, ``rm_engine/head/features.py``) for conversations of any length, given
untruncated as a pair, as RM Studio's own ids, or as one chat-templated string with or without the tokenizer's
special tokens; real tokenizers (MiniLM's WordPiece as an encoder and as two decoders' tokenizer)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rm_engine.backbone import _fit, build_inputs, normalize_history, render_context
from rm_engine.head.features import item_ids, items_for
from rm_engine.versions.export_inputs import NO_LIMIT, finish_tokenizer, input_spec
from rm_engine.versions.export_modeling import InputError, fit, model_inputs
from tests.tiny_models import build_tiny_decoder, minilm_dir

WORDS = ["the", "cat", "sat", "on", "a", "mat", "why?", "because", "it's", "warm", "42", "naïve", "user", "hello,",
         "[", "]", "<", "|", "assistant", "Assistant", "System", ":", "-", "\n", "\n\n", "tea", "emoji🙂"]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """layout -> (RM Studio's tokenizer, the exported tokenizer, decoder?) for the three layouts."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("export-inputs")
    out = {}
    for layout, src, decoder in (("text-pair", minilm_dir(), False),
                                 ("chat-template", build_tiny_decoder(root / "chat", chat_template=True), True),
                                 ("plain-dialogue", build_tiny_decoder(root / "plain", chat_template=False), True)):
        train = AutoTokenizer.from_pretrained(str(src))
        if decoder:
            train.pad_token = train.eos_token  # as rm_engine.backbone.load_tokenizer does
        folder = root / f"export-{layout}"
        train.save_pretrained(str(folder))
        spec = input_spec(train, decoder=decoder, max_length=16, rich=not decoder)
        assert spec["layout"] == layout
        assert finish_tokenizer(folder, spec, train, decoder=decoder)  # one-string inputs exact for this tokenizer
        out[layout] = (train, AutoTokenizer.from_pretrained(str(folder)), decoder)
    return out


texts = st.lists(st.sampled_from(WORDS), min_size=0, max_size=40).map(" ".join)
turns = st.lists(st.tuples(st.sampled_from(["user", "assistant", "system", "Human", "gpt"]), texts), max_size=3)


def _messages(prompt: str, history: list[tuple[str, str]], response: str) -> list[dict[str, str]]:
    return ([{"role": r, "content": t} for r, t in history] + [{"role": "user", "content": prompt},
                                                                {"role": "assistant", "content": response}])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.sampled_from(["text-pair", "chat-template", "plain-dialogue"]), prompt=texts, history=turns,
       response=texts, max_length=st.sampled_from([6, 9, 16, 33, 64]))
def test_the_model_reads_what_rm_studio_builds(tokenizers, layout, prompt, history, response, max_length) -> None:
    train, exported, decoder = tokenizers[layout]
    spec = input_spec(train, decoder=decoder, max_length=max_length, rich=not decoder)
    if spec.get("marker"):  # a response holding the context's closing marker is read from its last occurrence
        marker, resp = spec["marker"], train(" " + response, add_special_tokens=False)["input_ids"]
        assume(not any(resp[i:i + len(marker)] == marker for i in range(len(resp))))
    want = [build_inputs(train, prompt, history, response, max_length, decoder=decoder)]
    if spec["rich"]:
        _, r, p = items_for(prompt, history, response, "rich")
        want += [item_ids(train, r, max_length, decoder=False), item_ids(train, p, max_length, decoder=False)]

    untruncated = build_inputs(train, prompt, history, response, NO_LIMIT, decoder=decoder)
    assert model_inputs(untruncated, spec) == want  # the model card's ids
    if layout == "chat-template":  # the backbone's own template: RM Studio gives it normalised roles
        history = [(m["role"], m["content"]) for m in normalize_history(history)]
    text = exported.apply_chat_template(_messages(prompt, history, response), tokenize=False)
    for special in (False, True):  # TRL's GRPOTrainer / pipeline("text-classification")
        assert model_inputs(exported(text, add_special_tokens=special)["input_ids"], spec) == want
    if layout == "text-pair" and response:  # the pair call (transformers reads an empty text_pair as none)
        assert model_inputs(exported(render_context(prompt, history), response)["input_ids"], spec) == want


@given(ctx=st.lists(st.integers(0, 9), max_size=30), resp=st.lists(st.integers(0, 9), max_size=30),
       budget=st.integers(0, 40))
def test_truncation_is_rm_studios(ctx, resp, budget) -> None:
    assert fit(ctx, resp, budget) == _fit(ctx, resp, budget)


def test_the_exported_chat_templates(tokenizers) -> None:
    msgs = _messages("Why is the sky blue?", [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!")],
                     "Rayleigh scattering.")
    pair = tokenizers["text-pair"][1].apply_chat_template(msgs, tokenize=False)
    assert pair == ("[CLS]System: Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: Why is the sky blue?[SEP]"
                    "Rayleigh scattering.[SEP]")
    plain = tokenizers["plain-dialogue"][1].apply_chat_template(msgs, tokenize=False)
    assert plain.endswith("User: Why is the sky blue?\n\nAssistant: Rayleigh scattering.[SEP]")
    prompt_only = tokenizers["plain-dialogue"][1].apply_chat_template(msgs[:-1], tokenize=False,
                                                                        add_generation_prompt=True)
    assert prompt_only.endswith("User: Why is the sky blue?\n\nAssistant:")
    # multimodal-style content parts are joined as RM Studio's reward function joins them
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
             {"role": "assistant", "content": "c"}]
    assert tokenizers["text-pair"][1].apply_chat_template(parts, tokenize=False) == "[CLS]User: a b[SEP]c[SEP]"
    assert tokenizers["text-pair"][1].model_max_length == NO_LIMIT  # the tokenizer never truncates on its own


def test_inputs_the_model_cannot_read_name_what_to_send(tokenizers) -> None:
    train, exported, _ = tokenizers["text-pair"]
    spec = input_spec(train, decoder=False, max_length=16)
    one_text = exported("a prompt and its completion as one plain string")["input_ids"]
    with pytest.raises(InputError, match="no separator between context and response.*chat messages"):
        model_inputs(one_text, spec)
    train, exported, _ = tokenizers["chat-template"]
    spec = input_spec(train, decoder=True, max_length=16)
    short = exported(" ".join(["word"] * 10), add_special_tokens=False)["input_ids"]
    assert model_inputs(short, spec) == [short]  # within max_length a decoder reads the input as it is
    long = exported(" ".join(["word"] * 40), add_special_tokens=False)["input_ids"]
    with pytest.raises(InputError, match="40 tokens, more than the 16 .* no '< \\| assistant \\| >'"):
        model_inputs(long, spec)


def test_an_empty_response_still_has_its_separator(tokenizers) -> None:
    train, exported, _ = tokenizers["text-pair"]
    spec = input_spec(train, decoder=False, max_length=16, rich=True)
    text = exported.apply_chat_template(_messages("a question", [], ""), tokenize=False)
    want = [build_inputs(train, "a question", [], "", 16, decoder=False)]
    want += [item_ids(train, items_for("a question", [], "", "rich")[k], 16, decoder=False) for k in (1, 2)]
    for special in (False, True):
        assert model_inputs(exported(text, add_special_tokens=special)["input_ids"], spec) == want
