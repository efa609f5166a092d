"""The Data page's Team and Review tabs under AppTest, on a real SQLite database: annotators added with a tier,
personal and campaign links, tier changes that ask about earlier labels, revocation; flags, exclusions, relabel
requests and their audit; neither tab reachable without researcher rights."""
from __future__ import annotations

import hashlib
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from db import annotators as team
from db import review
from db.models import Annotator, AuditEvent, Label, RelabelRequest, ReviewFlag, Source
from db.session import Database
from db.store import add_label
from tests.app.conftest import MAIN, PAGES, Seeded

DATA = str(PAGES / "data.py")


def _data() -> AppTest:
    return AppTest.from_file(DATA, default_timeout=60).run()


def _button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; have {[b.label for b in at.button]}"
    return matches[0]


def _link(at: AppTest) -> str:
    [code] = [c.value for c in at.code if "://" in c.value]
    return code


def _frame(at: AppTest, *columns: str):
    """The table that has these columns."""
    found = [d.value for d in at.dataframe if set(columns) <= set(d.value.columns)]
    assert found, f"no table with {columns}"
    return found[0]


def _actions(db: Database) -> list[tuple[str, str]]:
    with db.read() as s:
        return [(e.actor, e.action) for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))]


def test_team_tab_adds_invites_retiers_and_revokes(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    with sqlite_db.write() as s:
        team.set_local_annotator(s, "rita", "expert")  # the researcher at the keyboard
    at = _data()
    assert not at.exception
    at.text_input(key="team_add_name").input("tess")
    at.radio(key="team_add_tier").set_value("crowd")
    _button(at, "Add").click().run()
    assert any("Added tess as crowd" in m.value for m in at.success)
    at.selectbox(key="team_pick").set_value("tess").run()
    _button(at, "Create personal link").click().run()
    assert not at.exception
    url = _link(at)
    token = parse_qs(urlsplit(url).query)["invite"][0]
    with sqlite_db.read() as s:
        tess = s.scalar(select(Annotator).where(Annotator.name == "tess"))
        assert tess.token_hash == hashlib.sha256(token.encode()).hexdigest()  # only the hash is kept

    # The labeler labels through it; then the researcher makes tess an expert, keeping her earlier label's tier.
    lab = AppTest.from_file(MAIN, default_timeout=30)
    lab.query_params["invite"] = token
    lab.run()
    _button(lab, "A better").click().run()
    at.radio(key="team_tier").set_value("expert").run()
    retag = at.radio(key="team_retag")
    assert retag.value is None and retag.options == ["keep crowd", "re-tag as expert"]  # asked, no default
    _button(at, "Change tier").click().run()
    assert any("Say what happens to their earlier labels" in e.value for e in at.error)
    at.radio(key="team_retag").set_value("keep").run()
    _button(at, "Change tier").click().run()
    assert any("tess: crowd -> expert, earlier labels keep their tier" in m.value for m in at.success)
    with sqlite_db.read() as s:
        assert s.scalar(select(Annotator.default_source).where(Annotator.name == "tess")) is Source.expert
        assert [x.source for x in s.scalars(select(Label))] == [Source.crowd]
        [change] = s.scalars(select(AuditEvent).where(AuditEvent.action == "tier")).all()
        assert (change.actor, change.detail) == ("rita", {"from": "crowd", "to": "expert", "retag": False,
                                                          "retagged": 0})
    _button(at, "Revoke link").click().run()
    assert any("revoked" in m.value for m in at.success)
    assert any(r["name"] == "tess" and r["link"] == "revoked"
               for r in _frame(at, "name", "link").to_dict("records"))
    lab.run()
    assert any("revoked or never existed" in e.value for e in lab.error)
    at.text_input(key="team_add_name").input("uma")
    _button(at, "Add").click().run()  # picked at once: the tier controls show hers, nothing asked
    assert at.selectbox(key="team_pick").value == "uma" and at.radio(key="team_tier").value == "crowd"
    assert not [r for r in at.radio if r.key == "team_retag"]
    at.selectbox(key="team_pick").set_value("tess").run()
    assert at.radio(key="team_tier").value == "expert"
    assert _actions(sqlite_db) == [("rita", "add"), ("rita", "add"), ("rita", "invite"), ("rita", "tier"),
                                   ("rita", "revoke"), ("rita", "add")]  # rita herself, then tess, then uma


def test_team_tab_opens_a_campaign_and_sets_who_labels_here(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    at = _data()
    assert "not set yet" in " ".join(m.value for m in at.markdown)
    at.text_input(key="team_me_name").input("rita")
    at.radio(key="team_me_tier").set_value("expert")
    _button(at, "Save").click().run()
    assert any("you label as rita (expert)" in m.value for m in at.success)
    at.text_input(key="team_base_url").input("https://lab.example")
    at.text_input(key="team_campaign_name").input("wave1")
    _button(at, "Open campaign link").click().run()
    url = _link(at)
    assert url.startswith("https://lab.example/?campaign=")
    worker = AppTest.from_file(MAIN, default_timeout=30)
    worker.query_params["campaign"] = parse_qs(urlsplit(url).query)["campaign"][0]
    worker.query_params["PROLIFIC_PID"] = "60aa11"
    worker.run()
    assert any(m.value == "Labeling as **wave1:60aa11** (crowd tier)" for m in worker.markdown)
    at.run()
    assert _frame(at, "workers").to_dict("records")[0] | {"created": None} == {
        "name": "wave1", "open": True, "workers": 1, "created": None}
    _button(at, "Close campaign").click().run()
    worker.run()
    assert any("campaign is closed" in e.value for e in worker.error)


def test_review_tab_acts_on_flagged_pairs_and_audits_each_action(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    cid = seeded.comparison_ids[0]
    with sqlite_db.write() as s:
        team.set_local_annotator(s, "rita", "expert")
        lab, _ = add_label(s, comparison_id=cid, outcome="a", source="crowd", annotator="cal", idempotency_key="k1")
        review.flag_pair(s, cid, "broken", by="cal", comment="response b is cut off", annotator_id=lab.annotator_id)
        lid = lab.id
    at = _data()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Flagged pairs"], metrics["Waiting for an expert"], metrics["Excluded labels"]) == ("1", "0", "0")
    flags = _frame(at, "reason", "comment")
    assert list(flags["pair"]) == [cid] and list(flags["comment"]) == ["response b is cut off"]
    assert at.selectbox(key="review_pick").value == cid
    at.button(key=f"review_pair_excl_{lid}").click().run()
    assert not at.exception
    with sqlite_db.read() as s:
        assert s.get(Label, lid).excluded
    assert any(f"Label {lid} by cal (crowd): `a`, **excluded from training**" in m.value for m in at.markdown)
    at.button(key=f"review_pair_incl_{lid}").click().run()
    at.text_input(key=f"review_pair_comment_{lid}").input("verdict looks reversed")
    at.button(key=f"review_pair_flag_{lid}").click().run()
    _button(at, "Ask an expert to relabel the pair").click().run()
    _button(at, "Resolve its flags (back to the queue)").click().run()
    assert not at.exception
    with sqlite_db.read() as s:
        assert not s.get(Label, lid).excluded
        assert [f.resolved_by for f in s.scalars(select(ReviewFlag))] == ["rita", "rita"]
        assert s.scalars(select(ReviewFlag.comment).where(ReviewFlag.label_id == lid)).one() == "verdict looks reversed"
        assert s.scalars(select(RelabelRequest.comparison_id)).all() == [cid]
    assert _actions(sqlite_db)[1:] == [("cal", "flag"), ("rita", "exclude"), ("rita", "include"), ("rita", "flag"),
                                   ("rita", "relabel"), ("rita", "resolve")]
    history = [d.value for d in at.dataframe if "what" in d.value.columns][0]  # the pair's, then the log
    assert list(history["who"]) == ["rita", "rita", "rita", "rita", "rita", "cal"]  # newest first
    assert history["what"].iloc[-1] == f"flagged pair {cid} (broken): response b is cut off"
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Flagged pairs"], metrics["Waiting for an expert"]) == ("0", "1")


def test_team_and_review_need_researcher_rights(app_env, sqlite_db: Database, seeded: Seeded, monkeypatch) -> None:
    monkeypatch.setenv("RMSTUDIO_RESEARCHER_TOKEN", "s3cret-token")
    at = _data()
    assert any("for researchers" in w.value for w in at.warning)
    assert not at.tabs and not [b for b in at.button if b.label in ("Add", "Create personal link")]
    assert not [k for k in at.session_state if str(k).startswith(("team_", "review_"))]
    main = AppTest.from_file(MAIN, default_timeout=30)
    main.query_params["invite"] = "anything"
    main.run()
    assert [t.value for t in main.title] == ["Label"]  # a labeler has the Label page only
    at.text_input[0].input("s3cret-token")
    at.button[0].click().run()
    assert [t.label for t in at.tabs][-2:] == ["Team", "Review"]
    assert not any(b.label == "Create personal link" for b in at.button)  # no annotator yet: no manage panel
    assert any(b.label == "Add" for b in at.button)


def test_conflicting_labels_on_the_dashboard_can_be_reviewed(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    cid = seeded.comparison_ids[2]
    with sqlite_db.write() as s:
        ids = [add_label(s, comparison_id=cid, outcome=o, source="crowd", annotator=who,
                         idempotency_key=f"c-{who}")[0].id for who, o in (("ann", "a"), ("bob", "b"), ("cyd", "a"))]
    at = AppTest.from_file(str(PAGES / "dashboard.py"), default_timeout=60)
    at.session_state["dash_tab"] = "Agreement"
    at.run()
    assert not at.exception
    at.selectbox(key="conflict_review").set_value(cid).run()
    at.button(key=f"conflict_excl_{ids[1]}").click().run()
    _button(at, "Ask an expert to relabel the pair").click().run()
    assert not at.exception
    with sqlite_db.read() as s:
        assert [s.get(Label, i).excluded for i in ids] == [False, True, False]
        assert s.scalars(select(RelabelRequest.comparison_id)).all() == [cid]
    assert [a for _, a in _actions(sqlite_db)] == ["exclude", "relabel"]
    assert any(f"Label {ids[1]} by bob (crowd): `b`, **excluded from training**" in m.value for m in at.markdown)


def test_model_vs_human_labels_on_inspect_can_be_reviewed(app_env, sqlite_db: Database, seeded: Seeded,
                                                          home) -> None:
    """A tiny head-mode version trained on 'a' labels; contradicting 'b' labels are what the model rejects most:
    each row of "Model vs human labels" can be flagged, excluded and sent to an expert, and shows its history."""
    import torch

    from db.config import Settings
    from rm_engine.config import TrainConfig
    from rm_engine.serving.scoring import rescore_stored
    from rm_engine.training import train_and_publish
    from tests.tiny_models import build_tiny_encoder

    torch.set_num_threads(1)
    backbone = build_tiny_encoder(home / "tiny", hidden=32, layers=1)
    with sqlite_db.write() as s:
        for cid in seeded.comparison_ids:
            add_label(s, comparison_id=cid, outcome="a", source="crowd", annotator="ann", idempotency_key=f"l-{cid}")
    cfg = TrainConfig(backbone=str(backbone), epochs=20, seed=0, val_fraction=0.0, device="cpu", max_length=64)
    version = train_and_publish(sqlite_db, Settings.from_env(), cfg).id
    with sqlite_db.write() as s:
        for cid in seeded.comparison_ids:
            add_label(s, comparison_id=cid, outcome="b", source="expert", annotator="eve", idempotency_key=f"r-{cid}")
    assert rescore_stored(sqlite_db, Settings.from_env(), version) > 0
    at = AppTest.from_file(str(PAGES / "inspect.py"), default_timeout=60)
    at.session_state["inspect_tab"] = "Model vs human labels"
    at.run()
    assert not at.exception and at.expander
    lid = int(next(b.key for b in at.button if b.key and b.key.startswith("disagree_") and "_excl_" in b.key)
              .rsplit("_", 1)[1])
    at.text_input(key=f"disagree_{lid}_comment_{lid}").input("model is right here")
    at.button(key=f"disagree_{lid}_flag_{lid}").click().run()
    at.button(key=f"disagree_{lid}_excl_{lid}").click().run()
    at.button(key=f"disagree_{lid}_relabel_{lid}").click().run()
    assert not at.exception
    with sqlite_db.read() as s:
        assert s.get(Label, lid).excluded
        assert s.scalars(select(ReviewFlag.comment).where(ReviewFlag.label_id == lid)).one() == "model is right here"
        assert s.scalars(select(RelabelRequest.label_id)).all() == [lid]
    assert [a for _, a in _actions(sqlite_db)] == ["flag", "exclude", "relabel"]
    shown = [d.value for d in at.dataframe if "what" in d.value.columns]
    assert any(list(h["what"])[:2] == [f"asked an expert to relabel pair {_pair_of(sqlite_db, lid)}",
                                       f"excluded label {lid} from training"] for h in shown)


def _pair_of(db: Database, label_id: int) -> int:
    with db.read() as s:
        return s.get(Label, label_id).comparison_id


def test_a_labelers_link_gets_the_label_page_only_even_in_open_mode(app_env, sqlite_db: Database,
                                                                    seeded: Seeded) -> None:
    with sqlite_db.write() as s:
        team.add_annotator(s, "lu", "crowd", by="rita")
        token = team.invite(s, "lu", by="rita")
        camp = team.open_campaign(s, "w", by="rita")
    for params in ({"invite": token}, {"campaign": camp, "worker_id": "w1"}):
        at = AppTest.from_file(MAIN, default_timeout=30)
        for k, v in params.items():
            at.query_params[k] = v
        at.run()
        assert [t.value for t in at.title] == ["Label"] and any(b.label == "A better" for b in at.button)
        with pytest.raises(ValueError, match="Known pages"):  # not even registered for this session
            at.switch_page("views/data.py")
    researcher = AppTest.from_file(MAIN, default_timeout=30).run()  # the same app without a link: open mode
    researcher.switch_page("views/data.py").run()
    assert "Data" in [t.value for t in researcher.title]
