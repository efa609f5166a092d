"""The reward server's request parsing: TRL-style and OpenRLHF-style bodies, and errors that name the field and row."""
from __future__ import annotations

import pytest

from rm_engine.reward_server import RequestError, parse_request

CHAT = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body,want", [
    ({"prompts": ["p1", "p2"], "completions": ["c1", "c2"]}, (["p1", "p2"], ["c1", "c2"])),
    ({"prompts": [CHAT], "completions": [[{"role": "assistant", "content": "yo"}]]},
     ([CHAT], [[{"role": "assistant", "content": "yo"}]])),
    ({"query": ["User: hi\nAssistant: hello", "Q? A."], "prompts": ["User: hi\nAssistant:", "Q?"]},
     (["User: hi\nAssistant:", "Q?"], [" hello", " A."])),  # OpenRLHF: the response is what follows the prompt
    ({"prompts": [], "completions": []}, ([], [])),
])
def test_bodies_that_parse(body: dict, want: tuple) -> None:
    assert parse_request(body, max_rows=10) == want


@pytest.mark.parametrize("body,message", [
    ([1, 2], "must be a JSON object"),
    ({"prompts": ["p"]}, "missing 'completions'"),
    ({"prompts": "p", "completions": ["c"]}, "'prompts' must be a list"),
    ({"prompts": ["p", 3], "completions": ["c", "d"]}, r"'prompts'\[1\] must be a string or a list of chat messages"),
    ({"prompts": [[1, 2]], "completions": ["c"]}, r"'prompts'\[0\]\[0\] must be a chat message"),
    ({"prompts": ["p"], "completions": [[{"role": "assistant", "content": "x"}, {"role": "user"}]]},
     r"'completions'\[0\]\[1\] must be a chat message"),
    ({"prompts": ["p"], "completions": ["c", "d"]}, "1 prompts for 2 completions"),
    ({"query": ["a", "b"], "prompts": ["a"]}, "2 queries for 1 prompts"),
    ({"query": ["ab", "xb"], "prompts": ["a", "a"]}, r"'query'\[1\] does not start with 'prompts'\[1\]"),
    ({"prompts": ["p"] * 11, "completions": ["c"] * 11}, "11 rows in one request; at most 10"),
])
def test_bad_bodies_name_the_problem(body: object, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse_request(body, max_rows=10)


class _Score:
    def __init__(self, z: float, std: float) -> None:
        self.z, self.raw, self.sigmoid, self.std = z, z * 2.0 + 1.0, 0.5, std


class _Model:
    """Stands in for a loaded version: z and member std (raw units) of each row, norm std 2."""

    norm_stats = {"mean": 1.0, "std": 2.0}

    def score_rows(self, rows: list) -> list[_Score]:
        return [_Score(z=float(len(r[2])), std=1.0) for r in rows]


def test_model_scorer_units_and_uncertainty_penalty() -> None:
    from rm_engine.reward_server import model_scorer
    from rm_engine.scoring import completion_rows

    rows = completion_rows(["p", "q"], ["ab", "abcd"])
    assert model_scorer(_Model(), "z")(rows) == {"rewards": [2.0, 4.0], "std": [0.5, 0.5]}  # std in z units
    assert model_scorer(_Model(), "raw")(rows) == {"rewards": [5.0, 9.0], "std": [1.0, 1.0]}
    assert model_scorer(_Model(), "z", penalty=2.0)(rows)["rewards"] == [1.0, 3.0]  # z - 2 x 0.5
    with pytest.raises(ValueError, match="applies to z rewards"):
        model_scorer(_Model(), "raw", penalty=1.0)


def test_batcher_scores_waiting_requests_together_and_a_bad_one_fails_alone() -> None:
    import asyncio

    from rm_engine.reward_server import Batcher

    calls: list[int] = []

    def score(prompts: list, completions: list) -> dict:
        calls.append(len(prompts))
        if "bad" in prompts:
            raise ValueError("bad row")
        return {"rewards": [float(len(c)) for c in completions], "std": [0.0] * len(prompts)}

    async def main() -> list:
        b = Batcher(score, max_rows=5)
        reqs = [(["p"] * 2, ["a", "bb"]), (["p"], ["ccc"]), (["bad"], ["x"]), (["p"] * 2, ["dddd", "e"])]
        return await asyncio.gather(*(b.submit(p, c) for p, c in reqs), return_exceptions=True)

    out = asyncio.run(main())
    assert out[0] == {"rewards": [1.0, 2.0], "std": [0.0, 0.0]} and out[1]["rewards"] == [3.0]
    assert isinstance(out[2], ValueError) and out[3]["rewards"] == [4.0, 1.0]
    # all four were waiting: the first three together (4 rows; the fourth would pass max_rows 5), which failed on
    # the bad one, so each of them again alone; then the fourth, carried to the next batch
    assert calls == [4, 2, 1, 1, 2]
