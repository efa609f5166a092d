"""The built-in demo data: its content, seeding on SQLite and PostgreSQL, idempotency, the CLI."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db import store
from db.demo import AI_ANNOTATOR, DEMO_FILE, DemoDataError, load_demo, seed_demo
from db.models import Annotator, Comparison, Label, Outcome, Prompt, Response, Source

DEMO = load_demo()
N_PAIRS = sum(len(p.responses) * (len(p.responses) - 1) // 2 for p in DEMO)


def _table_counts(db) -> dict[str, int]:
    with db.read() as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m)) for m in (Prompt, Response, Comparison, Label)}


# ---------------------------------------------------------------- the file itself


def test_demo_file_content_meets_the_brief() -> None:
    assert DEMO_FILE.is_file()
    assert len(DEMO) >= 48
    cats = Counter(p.category for p in DEMO)
    assert len(cats) >= 4 and {"coding", "math", "advice", "writing"} <= set(cats)
    assert all(n >= 4 for n in cats.values()), cats
    assert sum(len(p.responses) == 4 for p in DEMO) >= 8  # ranking mode
    assert sum(bool(p.history) for p in DEMO) >= 3  # multi-turn
    assert sum("```" in r.text for p in DEMO for r in p.responses) >= 5  # Markdown code blocks
    assert len({(p.text, p.history) for p in DEMO}) == len(DEMO)  # no duplicate prompts
    for p in DEMO:
        assert 2 <= len(p.responses) <= 4
        # distinct quality ranks 1..K, so every pair has a clear winner
        assert sorted(r.quality for r in p.responses) == list(range(1, len(p.responses) + 1)), p.text
        assert all(r.model for r in p.responses)
        assert all(len(r.text) < 1200 for r in p.responses)  # readable in seconds
    # the best response is not always listed first (position in the file must not give the answer away)
    assert Counter(next(i for i, r in enumerate(p.responses) if r.quality == 1) for p in DEMO)[0] < len(DEMO) * 0.7


@pytest.mark.parametrize(
    "line, field",
    [
        ('{"prompt": "", "category": "x", "responses": []}', "'prompt'"),
        ('{"prompt": "p", "category": "x", "responses": [{"text": "a", "model": "m", "quality": 1}]}', "'responses'"),
        ('{"prompt": "p", "category": "x", "responses": [{"text": "a", "model": "m", "quality": 1}, '
         '{"text": "b", "model": "m", "quality": 1}]}', "quality ranks must differ"),
        ('{"prompt": "p", "category": "x", "responses": [{"text": "a", "model": "m", "quality": 1}, '
         '{"text": "b", "model": "m", "quality": "2"}]}', "responses[1].quality"),
        ('{"prompt": "p", "category": "x", "history": [{"role": "bot", "content": "hi"}], "responses": []}', "history[0].role"),
        ("{not json", "invalid JSON"),
    ],
)
def test_malformed_demo_file_names_file_line_and_field(tmp_path: Path, line: str, field: str) -> None:
    f = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": "ok", "category": "c", "responses": [
        {"text": "x", "model": "m", "quality": 2}, {"text": "y", "model": "m", "quality": 1}]})
    f.write_text(good + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DemoDataError) as exc:
        load_demo(f)
    assert f"{f}:2" in str(exc.value) and field in str(exc.value)


# ---------------------------------------------------------------- seeding


def test_seed_counts_labels_and_idempotency(any_db) -> None:
    first = seed_demo(any_db)
    assert first["prompts"] == len(DEMO)
    assert first["responses"] == sum(len(p.responses) for p in DEMO)
    assert first["comparisons"] == first["demo_comparisons"] == N_PAIRS
    assert first["ai_labels"] == round(0.5 * N_PAIRS)
    assert first["unlabeled"] == N_PAIRS - first["ai_labels"]
    before = _table_counts(any_db)
    assert before == {"prompts": len(DEMO), "responses": first["responses"], "comparisons": N_PAIRS, "labels": first["ai_labels"]}

    again = seed_demo(any_db)
    assert {k: again[k] for k in ("prompts", "responses", "comparisons", "ai_labels")} == dict.fromkeys(
        ("prompts", "responses", "comparisons", "ai_labels"), 0
    )
    assert again["unlabeled"] == first["unlabeled"]
    assert _table_counts(any_db) == before

    with any_db.read() as s:
        cats = set(s.scalars(select(Prompt.category)))
        assert len(cats) >= 4 and cats == {p.category for p in DEMO}
        assert set(s.scalars(select(Prompt.text))) == {p.text for p in DEMO}
        assert all(p.tags == ["demo"] for p in s.scalars(select(Prompt)))
        assert sum(bool(p.history) for p in s.scalars(select(Prompt))) == sum(bool(p.history) for p in DEMO)
        labels = s.scalars(select(Label)).all()
        ann = s.scalars(select(Annotator).where(Annotator.name == AI_ANNOTATOR)).one()
        assert ann.default_source is Source.ai
        assert all(l.source is Source.ai and l.annotator_id == ann.id and l.origin == "demo" for l in labels)
        assert all(s.get(Comparison, l.comparison_id).label_count == 1 for l in labels)
        # every category keeps some AI labels and some unlabeled pairs
        labeled_cats = Counter(s.get(Comparison, l.comparison_id).prompt.category for l in labels)
        assert set(labeled_cats) == cats


def test_ai_label_outcomes_follow_quality_ranks(sqlite_db) -> None:
    seed_demo(sqlite_db, ai_labels_share=1.0)
    quality = {(store.prompt_hash(p.text, p.history_dicts()), r.text): r.quality for p in DEMO for r in p.responses}
    with sqlite_db.read() as s:
        labels = s.scalars(select(Label)).all()
        assert len(labels) == N_PAIRS
        outcomes = Counter()
        for l in labels:
            c = s.get(Comparison, l.comparison_id)
            ph = c.prompt.content_hash
            ra, rb = s.get(Response, c.response_a_id), s.get(Response, c.response_b_id)
            qa, qb = quality[(ph, ra.text)], quality[(ph, rb.text)]
            assert l.outcome is (Outcome.a if qa < qb else Outcome.b)
            assert l.strength == (2 if abs(qa - qb) >= 2 else 1)
            assert (l.extra["quality_a"], l.extra["quality_b"]) == (qa, qb)
            outcomes[l.outcome] += 1
        # winners sit on both stored sides, so a/b position carries no signal
        assert min(outcomes[Outcome.a], outcomes[Outcome.b]) > N_PAIRS * 0.25


def test_share_and_seed_pick_labels_deterministically(sqlite_db) -> None:
    assert seed_demo(sqlite_db, ai_labels_share=0.0)["ai_labels"] == 0
    assert _table_counts(sqlite_db)["labels"] == 0
    low = seed_demo(sqlite_db, ai_labels_share=0.25, seed=7)
    with sqlite_db.read() as s:
        keys_low = set(s.scalars(select(Label.idempotency_key)))
    assert len(keys_low) == low["ai_labels"] == round(0.25 * N_PAIRS)
    # a larger share with the same seed extends the same subset
    high = seed_demo(sqlite_db, ai_labels_share=0.5, seed=7)
    with sqlite_db.read() as s:
        keys_high = set(s.scalars(select(Label.idempotency_key)))
    assert keys_low < keys_high and high["ai_labels"] == round(0.5 * N_PAIRS) - len(keys_low)
    with pytest.raises(ValueError, match="ai_labels_share"):
        seed_demo(sqlite_db, ai_labels_share=1.5)


def test_other_seed_picks_other_pairs(home: Path) -> None:
    from db.session import Database

    picked = []
    for seed in (0, 1):
        db = Database(f"sqlite:///{home / f'seed{seed}.db'}")
        seed_demo(db, seed=seed)
        with db.read() as s:
            picked.append(set(s.scalars(select(Label.idempotency_key))))
        db.dispose()
    assert len(picked[0]) == len(picked[1]) and picked[0] != picked[1]


def test_cli_seed_demo(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli import main

    assert main(["seed-demo", "--no-ai-labels", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompts"] == len(DEMO) and out["ai_labels"] == 0 and out["unlabeled"] == N_PAIRS
    assert main(["seed-demo"]) == 0
    text = capsys.readouterr().out
    assert "added 0 prompts" in text and f"{round(0.5 * N_PAIRS)} AI labels" in text
