"""Review and team changes on real databases: an excluded label leaves the next training (both modes) and the
exports, and comes back when included again; a tier change re-tags earlier labels only when asked; every review
and team action leaves one audit row; expert relabel requests reach experts first."""
from __future__ import annotations

import hashlib
import io
import json

import pytest
from sqlalchemy import func, select

from db import annotators as team
from db import review
from db.exporter import export
from db.labeling import RELABEL, QueuePolicy, item_for_comparison, next_pair, submit_label
from db.models import AuditEvent, Label, Ranking, RelabelRequest, ReviewFlag, Source
from db.pairs import training_pairs
from db.session import Database
from db.store import add_label, add_ranking
from rm_engine.training import train_and_publish
from tests.app.conftest import PAIRS, seed_small
from tests.integration.rm_seed import engine_settings, one_thread, seed_labels, tiny_config, tiny_encoder  # noqa: F401


def _ids_sha(ids: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, sorted(ids))).encode()).hexdigest()


def _label_ids(db: Database) -> list[int]:
    with db.read() as s:
        return list(s.scalars(select(Label.id).where(Label.split == "train").order_by(Label.id)))


def _audit(db: Database) -> list[tuple[str, str, int | None, int | None, int | None]]:
    with db.read() as s:
        return [(e.actor, e.action, e.label_id, e.comparison_id, e.annotator_id)
                for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("mode", ["head", "finetune"])
def test_an_excluded_label_leaves_the_next_training_and_comes_back(mode: str, sqlite_db: Database, engine_settings,
                                                                    tiny_encoder) -> None:
    seed_labels(sqlite_db, 16)
    ids = _label_ids(sqlite_db)
    out = ids[3]
    cfg = tiny_config(tiny_encoder, mode=mode, epochs=2 if mode == "finetune" else 20, batch_tokens=2048)
    with sqlite_db.write() as s:
        assert review.exclude_label(s, out, by="rita", reason="annotator misread the prompt")
        assert not review.exclude_label(s, out, by="rita")  # already excluded: nothing more recorded
    v1 = train_and_publish(sqlite_db, engine_settings, cfg)
    snap = v1.data_snapshot
    assert snap["excluded"].get("review_excluded") == 1 and snap["n_labels"] == len(ids) - 1
    assert snap["label_ids_sha256"] == _ids_sha([i for i in ids if i != out])
    with sqlite_db.read() as s:
        assert s.get(Label, out).excluded  # kept in the database, shown as excluded
    with sqlite_db.write() as s:
        assert review.include_label(s, out, by="rita")
    v2 = train_and_publish(sqlite_db, engine_settings, cfg)
    assert "review_excluded" not in v2.data_snapshot["excluded"] and v2.data_snapshot["n_labels"] == len(ids)
    assert v2.data_snapshot["label_ids_sha256"] == _ids_sha(ids)
    assert [a for _, a, *_ in _audit(sqlite_db)] == ["exclude", "include"]
    assert _audit(sqlite_db)[0][:3] == ("rita", "exclude", out)


def test_excluded_labels_stay_out_of_pairs_and_exports(any_db: Database) -> None:
    seeded = seed_small(any_db)
    cid = seeded.comparison_ids[0]
    with any_db.write() as s:
        keep, _ = add_label(s, comparison_id=cid, outcome="a", source="crowd", annotator="ann", idempotency_key="k1")
        drop, _ = add_label(s, comparison_id=seeded.comparison_ids[1], outcome="b", source="crowd", annotator="ann",
                            idempotency_key="k2")
        review.exclude_label(s, drop.id, by="rita")
        keep_id, drop_id = keep.id, drop.id
    with any_db.read() as s:
        ps = training_pairs(s)
    assert [p.label_id for p in ps.pairs] == [keep_id] and ps.excluded == {"review_excluded": 1}
    for fmt in ("trl", "comparisons"):
        buf = io.BytesIO()
        rep = export(any_db, fmt, buf)
        lines = [json.loads(x) for x in buf.getvalue().decode().splitlines()]
        assert rep.excluded.get("review_excluded") == 1, fmt
        if fmt == "comparisons":  # its pair is still exported, as unlabeled: nothing silently lost
            assert [r["key"] for r in lines if r.get("key")] == ["k1"]
            assert [r for r in lines if r["prompt"] == PAIRS[1][0]] == [
                {"prompt": PAIRS[1][0], "category": PAIRS[1][4],
                 "responses": [{"text": PAIRS[1][2], "model": "m1"}, {"text": PAIRS[1][3], "model": "m2"}]}]
        else:
            assert len(lines) == 1
    with any_db.read() as s:
        assert s.get(Label, drop_id).excluded  # still stored


def test_a_tier_change_retags_only_when_asked_and_is_recorded(any_db: Database) -> None:
    seeded = seed_small(any_db)
    with any_db.write() as s:
        ann = team.add_annotator(s, "nia", "crowd", by="rita")
        for i, cid in enumerate(seeded.comparison_ids[:3]):
            add_label(s, comparison_id=cid, outcome="a", source=ann.tier, annotator=ann, idempotency_key=f"n{i}")
        add_ranking(s, prompt_id=seeded.ranking_prompt_id, response_ids=_ranking_ids(s, seeded),
                    source="crowd", annotator=ann, idempotency_key="r1")
        change = team.set_tier(s, "nia", "expert", by="rita", retag=False)
    assert (change.old, change.new, change.retagged) == ("crowd", "expert", 0)

    def sources() -> list[str]:
        with any_db.read() as s:
            return sorted(x.value for x in [*s.scalars(select(Label.source)), *s.scalars(select(Ranking.source))])

    assert sources() == ["crowd"] * 4  # kept: made as crowd
    with any_db.write() as s:
        item = item_for_comparison(s, seeded.comparison_ids[3])
        submit_label(s, item, "left", annotator=team.get_annotator(s, "nia"))  # the tier on record, now expert
    assert sources() == ["crowd"] * 4 + ["expert"]
    with any_db.write() as s:
        assert team.set_tier(s, "nia", "crowd", by="sam", retag=True).retagged == 1
        assert team.set_tier(s, "nia", "expert", by="sam", retag=True).retagged == 5  # labels and the ranking
        assert team.set_tier(s, "nia", "expert", by="sam", retag=True).retagged == 0  # the same tier: no change
        with pytest.raises(ValueError, match="expert or crowd"):
            team.set_tier(s, "nia", "ai", by="sam", retag=True)
    assert sources() == ["expert"] * 5
    with any_db.read() as s:
        tiers = [(e.actor, e.detail["from"], e.detail["to"], e.detail["retag"], e.detail["retagged"], e.created_at is not None)
                 for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "tier").order_by(AuditEvent.id))]
    assert tiers == [("rita", "crowd", "expert", False, 0, True), ("sam", "expert", "crowd", True, 1, True),
                     ("sam", "crowd", "expert", True, 5, True)]


def _ranking_ids(s, seeded) -> list[int]:
    from db.models import Response

    return list(s.scalars(select(Response.id).where(Response.prompt_id == seeded.ranking_prompt_id)))[:3]


def test_each_review_action_leaves_an_audit_row(any_db: Database) -> None:
    seeded = seed_small(any_db)
    cid, other = seeded.comparison_ids[0], seeded.comparison_ids[1]
    with any_db.write() as s:
        lab, _ = add_label(s, comparison_id=cid, outcome="a", source="crowd", annotator="ann", idempotency_key="k1")
        ann_id, lid = lab.annotator_id, lab.id
    steps = [
        ("flag", lambda s: review.flag_label(s, lid, by="rita", comment="looks reversed")),
        ("flag", lambda s: review.flag_pair(s, other, "offensive", by="ann", annotator_id=ann_id)),
        ("exclude", lambda s: review.exclude_label(s, lid, by="rita")),
        ("include", lambda s: review.include_label(s, lid, by="sam")),
        ("relabel", lambda s: review.request_relabel(s, cid, by="rita", label_id=lid)),
        ("resolve", lambda s: review.resolve_flags(s, cid, by="sam", note="checked")),
    ]
    for i, (action, step) in enumerate(steps):
        with any_db.write() as s:
            step(s)
        rows = _audit(any_db)
        assert len(rows) == i + 1 and rows[-1][1] == action
    rows = _audit(any_db)
    assert rows[0] == ("rita", "flag", lid, cid, None) and rows[1] == ("ann", "flag", None, other, ann_id)
    assert rows[2] == ("rita", "exclude", lid, cid, ann_id) and rows[3] == ("sam", "include", lid, cid, ann_id)
    with any_db.write() as s:  # a second request for a waiting pair and an empty resolve record nothing
        assert review.request_relabel(s, cid, by="rita")[1] is False
        assert review.resolve_flags(s, cid, by="sam") == 0
        with pytest.raises(ValueError, match="unknown flag reason"):
            review.flag_pair(s, cid, "boring", by="x")
        with pytest.raises(LookupError, match="label 999 does not exist"):
            review.exclude_label(s, 999, by="x")
    assert len(_audit(any_db)) == len(steps)
    with any_db.read() as s:
        shown = review.history(s, label_id=lid)  # what the label's review panel lists, newest first
        assert [h["who"] for h in shown] == ["sam", "rita", "sam", "rita", "rita"]
        assert shown[-1]["what"] == f"flagged label {lid} (wrong_label): looks reversed"
        assert review.review_counts(s) == {"open_flags": 1, "waiting_for_expert": 1, "excluded": 0}


def test_relabel_requests_go_to_experts_first_and_an_expert_label_answers_them(any_db: Database) -> None:
    seeded = seed_small(any_db)
    wanted = seeded.comparison_ids[-1]
    with any_db.write() as s:
        team.add_annotator(s, "ed", "expert", by="rita")
        team.add_annotator(s, "cy", "crowd", by="rita")
        review.request_relabel(s, wanted, by="rita")
    with any_db.read() as s:
        crowd = next_pair(s, "cy", QueuePolicy(control_share=0.0))
        item = next_pair(s, "ed", QueuePolicy(control_share=0.0))
    assert (item.comparison_id, item.reason) == (wanted, RELABEL)
    assert crowd.reason != RELABEL
    with any_db.write() as s:
        label, _ = submit_label(s, item, "right", annotator=team.get_annotator(s, "ed"))
        assert label.source is Source.expert
    with any_db.read() as s:
        req = s.scalars(select(RelabelRequest)).one()
        assert req.done_label_id == label.id and req.done_at is not None
        assert next_pair(s, "ed", QueuePolicy(control_share=0.0)).reason != RELABEL
        assert s.scalar(select(func.count()).select_from(ReviewFlag)) == 0
        assert [e.action for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))][-1] == "relabelled"


def test_links_store_only_a_hash_and_revoke_at_once(any_db: Database) -> None:
    with any_db.write() as s:
        team.add_annotator(s, "lia", "crowd", by="rita")
        token = team.invite(s, "lia", by="rita")
    assert team.invite_url("https://lab.example:8501/rm/?x=1#top", token) == f"https://lab.example:8501/rm/?invite={token}"
    with pytest.raises(ValueError, match="address is needed"):
        team.invite_url("", token)
    with any_db.read() as s:
        ann = team.get_annotator(s, "lia")
        assert ann.token_hash == hashlib.sha256(token.encode()).hexdigest() and token not in ann.token_hash
        assert team.annotator_for_link(s, token).name == "lia"
    with any_db.write() as s:
        newer = team.invite(s, "lia", by="rita")  # a new link replaces the old
    with any_db.read() as s:
        with pytest.raises(team.LinkError):
            team.annotator_for_link(s, token)
        assert team.annotator_for_link(s, newer).name == "lia"
    with any_db.write() as s:
        team.revoke(s, "lia", by="rita")
        with pytest.raises(team.LinkError, match="revoked"):
            team.annotator_for_link(s, newer)
        with pytest.raises(team.LinkError, match="revoked"):
            team.active_annotator(s, team.get_annotator(s, "lia").id)
        with pytest.raises(ValueError, match="expert or crowd"):
            team.add_annotator(s, "bot", "ai", by="rita")
        add_label(s, comparison_id=_any_comparison(s), outcome="a", source="ai", annotator="gpt-judge",
                  idempotency_key="ai1")
        with pytest.raises(ValueError, match="machine labeler"):
            team.invite(s, "gpt-judge", by="rita")
    assert [a for _, a, *_ in _audit(any_db)] == ["add", "invite", "invite", "revoke"]


def _any_comparison(s) -> int:
    from db.store import get_or_create_comparison, get_or_create_prompt, get_or_create_response

    p = get_or_create_prompt(s, "q")
    return get_or_create_comparison(s, get_or_create_response(s, p, "x"), get_or_create_response(s, p, "y")).comparison.id


def test_campaign_workers_are_crowd_and_never_take_over_another_name(any_db: Database) -> None:
    with any_db.write() as s:
        token = team.open_campaign(s, "wave1", by="rita")
        team.add_annotator(s, "wave1:taken", "expert", by="rita")
    with any_db.write() as s:
        a = team.join_campaign(s, token, "5f3a9c0b")
        assert (a.name, a.default_source) == ("wave1:5f3a9c0b", Source.crowd)
        assert team.join_campaign(s, token, "5f3a9c0b").id == a.id  # the second visit is the same annotator
        with pytest.raises(team.LinkError, match="belongs to another annotator"):
            team.join_campaign(s, token, "taken")
        with pytest.raises(team.LinkError, match="worker id"):
            team.join_campaign(s, token, "a b")
        with pytest.raises(team.LinkError, match="closed or never existed"):
            team.join_campaign(s, "guess", "w1")
    with any_db.write() as s:
        team.close_campaign(s, "wave1", by="rita")
    with any_db.write() as s, pytest.raises(team.LinkError, match="closed"):
        team.join_campaign(s, token, "5f3a9c0b")


def test_the_team_from_the_command_line(sqlite_db: Database, capsys: pytest.CaptureFixture[str]) -> None:
    from cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    assert run("annotators", "add", "ada", "--tier", "crowd", "--json")[:2] == (0, '{\n  "name": "ada",\n  "tier": "crowd"\n}\n')
    rc, _, err = run("annotators", "add", "ada", "--tier", "expert")
    assert rc == 1 and "exists already" in err
    rc, out, _ = run("annotators", "invite", "ada", "--base-url", "http://lab:8501", "--json")
    link = json.loads(out)
    assert rc == 0 and (link["name"], link["tier"]) == ("ada", "crowd") and link["url"].startswith("http://lab:8501/?invite=")
    token = link["url"].split("invite=")[1]
    with sqlite_db.write() as s:
        assert team.annotator_for_link(s, token).name == "ada"
        add_label(s, comparison_id=_any_comparison(s), outcome="a", source="crowd", annotator="ada",
                  idempotency_key="a1")
    rc, _, err = run("annotators", "set", "ada", "--tier", "expert")  # not a terminal: it must be told
    assert rc == 1 and "pass --retag" in err and "1 as crowd" in err
    assert run("annotators", "set", "ada", "--tier", "expert", "--keep-labels")[:2] == (
        0, "ada: crowd -> expert (earlier labels keep their tier)\n")
    assert run("annotators", "set", "ada", "--tier", "crowd", "--retag", "--json")[1].count('"retagged": 0') == 1
    rc, out, _ = run("annotators", "set", "ada", "--tier", "expert", "--retag")
    assert rc == 0 and "1 earlier label(s) re-tagged" in out
    assert run("annotators", "revoke", "ada")[0] == 0
    with sqlite_db.read() as s:
        with pytest.raises(team.LinkError):
            team.annotator_for_link(s, token)
        assert s.scalar(select(Label.source)) is Source.expert
    rc, out, _ = run("annotators", "campaign", "wave", "--json")
    assert rc == 0 and json.loads(out)["url"].startswith("http://localhost:8501/?campaign=")
    rc, out, _ = run("annotators", "team", "--json")
    assert [(m["name"], m["tier"], m["labels"], m["link"]) for m in json.loads(out)] == [("ada", "expert", 1, "revoked")]
    assert run("annotators", "campaign", "wave", "--close")[0] == 0
    rc, _, err = run("annotators", "invite", "nobody")
    assert rc == 1 and "no annotator named 'nobody'" in err
    assert run("annotators", "--json")[:2] == (0, "[]\n")  # the reliability listing, as before
