"""The reward server's request bodies: TRL-style and OpenRLHF-style bodies become the conversation RM Studio scores
(chat markup parsed away, OpenRLHF queries matched to their prompts through tokenizer round trips and truncation),
and every refusal names the field, the row and what to send instead."""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rm_engine.serving.chat_markup import learn_markup
from rm_engine.serving.reward_requests import Reading, RequestError, parse_request
from tests.chat_templates import FAMILIES, QWEN2_DEFAULT_SYSTEM, render_family

CHAT = [{"role": "user", "content": "hi"}]
SYS = {"role": "system", "content": "Answer in one sentence."}
LONG = "Tell me, in some detail and with an example or two, how a bicycle's derailleur moves the chain across cogs."


@pytest.mark.parametrize("body,want", [
    ({"prompts": ["p1", "p2"], "completions": ["c1", "c2"]}, [("p1", None, "c1"), ("p2", None, "c2")]),
    ({"prompts": [CHAT], "completions": [[{"role": "assistant", "content": "yo"}]]}, [("hi", None, "yo")]),
    ({"prompts": [[SYS, *CHAT]], "completions": ["yo"]}, [("hi", [SYS], "yo")]),  # system: an earlier turn
    ({"query": ["User: hi\nAssistant: hello", "Q? A."], "prompts": ["User: hi\nAssistant:", "Q?"]},
     [("User: hi\nAssistant:", None, "hello"), ("Q?", None, "A.")]),  # OpenRLHF: what follows the prompt
    ({"query": ["Q?  A."], "prompts": ["Q?"], "labels": None}, [("Q?", None, "A.")]),  # labels: ignored
    ({"prompts": [], "completions": []}, []),
    # a templated prompt is its conversation: markup never reaches the model
    ({"prompts": ["<s>[INST] hi [/INST]"], "completions": [" yo</s>"]}, [("hi", None, "yo")]),
    ({"prompts": ["<|im_start|>system\nAnswer in one sentence.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                  "<|im_start|>assistant\n"], "completions": ["yo"]}, [("hi", [SYS], "yo")]),
])
def test_bodies_that_parse(body: dict, want: list) -> None:
    assert parse_request(body, Reading(max_rows=10)) == want


def test_system_messages_can_be_dropped() -> None:
    reading = Reading(drop_system=True)
    assert parse_request({"prompts": [[SYS, *CHAT]], "completions": ["yo"]}, reading) == [("hi", None, "yo")]
    chatml = ("<|im_start|>system\nAnswer in one sentence.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
              "<|im_start|>assistant\n")
    assert parse_request({"query": [chatml + "yo<|im_end|>"], "prompts": [chatml]}, reading) == [("hi", None, "yo")]


@pytest.mark.parametrize("body,message,field,row,status", [
    ([1, 2], "must be a JSON object", "body", None, 400),
    ({"prompts": ["p"]}, "neither 'completions' nor 'query'", "completions", None, 400),
    ({"prompts": "p", "completions": ["c"]}, r"'prompts' must be a list .*send 'prompts' as a JSON list", "prompts",
     None, 400),
    ({"prompts": ["p", 3], "completions": ["c", "d"]}, r"'prompts'\[1\] must be a string or a list of chat messages",
     "prompts", 1, 400),
    ({"prompts": [[1, 2]], "completions": ["c"]}, r"'prompts'\[0\]\[0\] is not a chat message; send each message",
     "prompts", 0, 400),
    ({"prompts": ["p"], "completions": [[{"role": "assistant", "content": "x"}, {"role": "user"}]]},
     r"'completions'\[0\]\[1\] is not a chat message", "completions", 0, 400),
    ({"prompts": ["p"], "completions": ["c", "d"]}, "1 prompts for 2 completions; send one prompt per completion",
     "prompts", None, 400),
    ({"query": ["a", "b"], "prompts": ["a"]}, "1 prompts for 2 queries", "prompts", None, 400),
    ({"query": ["ab", "xb"], "prompts": ["a", "a"]},
     r"'query'\[1\] does not continue 'prompts'\[1\] .* send each query as its prompt followed by the response",
     "query", 1, 400),
    ({"query": ["no markup here"]}, r"'query'\[0\] holds no chat markup .*--chat-template", "query", 0, 400),
    ({"query": [None], "prompts": ["a"]}, r"'query'\[0\] is null", "query", 0, 400),
    ({"prompts": ["p\ud800"], "completions": ["c"]}, r"'prompts'\[0\] holds an unpaired UTF-16 surrogate", "prompts",
     0, 400),
    ({"prompts": ["p"] * 11, "completions": ["c"] * 11}, "holds 11 rows; at most 10 in one request; send smaller",
     "completions", None, 413),
    ({"prompts": ["p"], "completions": ["c" * 101]}, r"'completions'\[0\] holds 101 characters; at most 100",
     "completions", 0, 413),
])
def test_bad_bodies_name_the_field_the_row_and_what_to_send(body: object, message: str, field: str, row: int | None,
                                                            status: int) -> None:
    with pytest.raises(RequestError, match=message) as err:
        parse_request(body, Reading(max_rows=10, max_text_chars=100))
    assert (err.value.field, err.value.row, err.value.status) == (field, row, status)


MISTRAL_PROMPT = f"<s>[INST] {LONG} [/INST]"


@pytest.mark.parametrize("query", [
    f"<s>[INST] {LONG} [/INST] A derailleur pushes the chain sideways.</s>",  # as sent
    f"</s></s><s> [INST] {LONG} [/INST] A derailleur pushes the chain sideways.</s></s></s>",  # round trip, padding
    f"{LONG[40:]} [/INST]A derailleur pushes the chain sideways.</s>",  # the prompt's beginning cut (left truncation)
    f"\ufffd{LONG[41:]} [/INST] A derailleur pushes the chain sideways.",  # ... through a multi-byte character
    f"[INST] {LONG} [/INST]\n\nA derailleur pushes the chain sideways.",
])
def test_openrlhf_queries_match_their_prompt_through_round_trips_and_truncation(query: str) -> None:
    rows = parse_request({"query": [query], "prompts": [MISTRAL_PROMPT], "labels": ["x"]})
    assert rows == [(LONG, None, "A derailleur pushes the chain sideways.")]


def test_openrlhf_queries_without_prompts_or_with_a_cut_prompt_are_read_through_their_markup() -> None:
    dialogue = ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\n"
                "and now?<|im_end|>\n<|im_start|>assistant\n")
    # older OpenRLHF sends the queries alone
    rows = parse_request({"query": [dialogue + "Now this.<|im_end|><|endoftext|>"]})
    assert rows == [("and now?", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                     "Now this.")]
    # the end of a long prompt cut off (right truncation): the beginning still matches, the rest is the response
    cut = MISTRAL_PROMPT[:-30]
    assert parse_request({"query": [cut + " and more"], "prompts": [MISTRAL_PROMPT]}) == [
        (LONG, None, "and more")]


TEXT = st.text(st.sampled_from("abcdefghij KLMNOP 0123456789.,!?'-\n"), min_size=1, max_size=40).map(str.strip)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from(sorted(FAMILIES)), system=st.one_of(st.none(), TEXT),
       turns=st.lists(st.tuples(TEXT, TEXT), min_size=0, max_size=4), last=TEXT, response=TEXT,
       keep=st.integers(200, 600), space=st.sampled_from(["", " ", "\n"]), pad=st.integers(0, 3))
def test_any_templated_conversation_sent_as_openrlhf_sends_it_scores_as_the_conversation(
        family: str, system: str | None, turns: list, last: str, response: str, keep: int, space: str,
        pad: int) -> None:
    assume(all(t for pair in turns for t in pair) and last and response)
    _, _, eos, has_system, _ = FAMILIES[family]
    history = ([{"role": "system", "content": system}] if system and has_system else []) + [
        {"role": r, "content": t} for u, a in turns for r, t in (("user", u), ("assistant", a))]
    prompt = render_family(family, [*history, {"role": "user", "content": last}])
    if family == "qwen2" and not (history and history[0]["role"] == "system"):  # its template adds one
        history = [{"role": "system", "content": QWEN2_DEFAULT_SYSTEM}, *history]
    # what a tokenizer round trip and a left-truncating trainer make of it: the prompt's beginning cut (it keeps
    # its last hundreds of tokens), a space after special tokens, padding on both sides
    start = max(0, len(prompt) - keep)
    query = eos * pad + prompt[start:].replace(">", ">" + space) + response + eos * (1 + pad)
    rows = parse_request({"query": [query], "prompts": [prompt], "labels": [None]})
    assert rows == [(last, history or None, response)]


def test_a_custom_template_is_read_before_the_built_in_ones(tmp_path) -> None:
    template = ("{% for m in messages %}### {{ m['role'] | capitalize }}:\n{{ m['content'] }}\n\n{% endfor %}"
                "{% if add_generation_prompt %}### Assistant:\n{% endif %}")
    reading = Reading(markups=(learn_markup("hashes", template), *Reading().markups))
    prompt = "### System:\nBe brief.\n\n### User:\nhi\n\n### Assistant:\n"
    assert parse_request({"prompts": [prompt], "completions": ["yo"]}, reading) == [
        ("hi", [{"role": "system", "content": "Be brief."}], "yo")]
    assert parse_request({"prompts": [prompt], "completions": ["yo"]}) == [(prompt, None, "yo")]  # plain text


class _Score:
    def __init__(self, z: float, std: float) -> None:
        self.z, self.raw, self.sigmoid, self.std = z, z * 2.0 + 1.0, 0.5, std


class _Model:
    """Stands in for a loaded version: z and member std (raw units) of each row, norm std 2."""

    norm_stats = {"mean": 1.0, "std": 2.0}

    def score_rows(self, rows: list) -> list[_Score]:
        return [_Score(z=float(len(r[2])), std=1.0) for r in rows]


def test_model_scorer_units_and_uncertainty_penalty() -> None:
    from rm_engine.serving.reward_requests import completion_rows
    from rm_engine.serving.reward_server import model_scorer

    rows = completion_rows(["p", "q"], ["ab", "abcd"])
    assert model_scorer(_Model(), "z")(rows) == {"rewards": [2.0, 4.0], "std": [0.5, 0.5]}  # std in z units
    assert model_scorer(_Model(), "raw")(rows) == {"rewards": [5.0, 9.0], "std": [1.0, 1.0]}
    assert model_scorer(_Model(), "z", penalty=2.0)(rows)["rewards"] == [1.0, 3.0]  # z - 2 x 0.5
    with pytest.raises(ValueError, match="applies to z rewards"):
        model_scorer(_Model(), "raw", penalty=1.0)


SPACES = " " * 200_000
TURN = "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\ny<|im_end|>\n"


@pytest.mark.parametrize("body", [
    {"prompts": ["<|im_start|>user\n" + SPACES + "x" + SPACES], "completions": [SPACES + "<|im_end|>" + SPACES + "z"]},
    {"query": ["x" * 40 + "a" * 300_000], "prompts": ["a" * 300_000]},  # a repetitive prompt, no match
    {"query": ["ab" * 150_000 + "c"], "prompts": ["ba" * 150_000]},
    {"query": [TURN * 5000 + "<|im_start|>assistant\nz"]},  # 5,000 turns
    {"query": [SPACES + "[/INST]" + SPACES], "prompts": [SPACES + "[INST]" + SPACES]},
])
def test_adversarial_texts_are_read_in_linear_time(body: dict) -> None:
    t0 = time.monotonic()
    try:
        parse_request(body)
    except RequestError:
        pass
    assert time.monotonic() - t0 < 3
