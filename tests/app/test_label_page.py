"""The Label page under AppTest, against a real SQLite database with data in it: identity from personal links,
campaign links or the researcher's own (never from the address's other parameters), labels, flags, undo."""
from __future__ import annotations

import gc
from types import SimpleNamespace

from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from app import label_session as ls
from app import label_view
from app import rank_session as rs
from app.render import defang_links
from db import annotators as team
from db import review
from db.config import Settings
from db.guidelines import set_guidelines
from db.labeling import QueuePolicy, item_for_comparison, next_pair
from db.models import Annotator, AuditEvent, Comparison, FlagReason, Label, Outcome, Ranking, ReviewFlag, Side, Source
from db.pairs import training_pairs
from db.session import Database
from tests.app.conftest import MAIN, PAGES, XSS_IMG, XSS_LINK, XSS_SCRIPT, Seeded, invite


def _db() -> Database:
    return Database(Settings.from_env().db_url)


def _open(**params: str) -> AppTest:
    """The Label page at an address with these query parameters."""
    at = AppTest.from_file(MAIN, default_timeout=30)
    for k, v in params.items():
        at.query_params[k] = v
    return at.run()


def _app(name: str = "alice", tier: str = "expert", **params: str) -> AppTest:
    """The Label page through a new personal link of ``name`` (plus any other query parameters)."""
    return _open(invite=invite(name, tier), **params)


def _local_app(name: str = "me", tier: str = "expert") -> AppTest:
    """The Label page of the researcher's own machine, labeling as ``name``."""
    db = _db()
    try:
        with db.write() as s:
            team.set_local_annotator(s, name, tier)
    finally:
        db.dispose()
    return AppTest.from_file(MAIN, default_timeout=30).run()


def _button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; have {[b.label for b in at.button]}"
    return matches[0]


def _labels(db: Database) -> list[SimpleNamespace]:
    """Stored labels as plain objects (column values plus the annotator's name)."""
    with db.read() as s:
        out = []
        for r in s.scalars(select(Label).order_by(Label.id)):
            row = SimpleNamespace(**{c.key: getattr(r, c.key) for c in Label.__table__.columns})
            row.annotator = SimpleNamespace(name=r.annotator.name)
            out.append(row)
        return out


def _said(at: AppTest) -> str:
    return " ".join(m.value for m in [*at.markdown, *at.warning, *at.error, *at.info])


def _progress(at: AppTest) -> str:
    """The compact progress line ("Today **n** · all time **m** · ...")."""
    [line] = [c.value for c in at.caption if c.value.startswith("Today ")]
    return line


def test_local_identity_is_set_once_and_the_address_cannot_change_it(app_env, sqlite_db: Database,
                                                                     seeded: Seeded) -> None:
    """Without a researcher token the person at the keyboard is the researcher: they name themselves and pick a
    tier once; a reload keeps it without anything in the address, and ``annotator=``/``source=`` there are ignored."""
    at = AppTest.from_file(MAIN, default_timeout=30).run()
    assert not at.exception
    assert [b.label for b in at.button if b.label == "A better"] == []  # identity first
    assert at.radio[0].options == ["expert", "crowd"]  # people are never ai
    at.text_input[0].input("  carol ")
    at.radio[0].set_value("expert")
    at.button[0].click().run()  # the form's submit button
    assert not at.exception
    assert any("Labeling as **carol** (expert tier)" == m.value for m in at.markdown)
    assert "annotator" not in at.query_params  # nothing in the address to tamper with
    again = AppTest.from_file(MAIN, default_timeout=30)
    again.query_params["annotator"] = "mallory"
    again.query_params["source"] = "ai"
    again.run()
    assert any("Labeling as **carol** (expert tier)" == m.value for m in again.markdown)
    assert any("annotator=mallory" in w.value and "ignored" in w.value for w in again.warning)
    _button(again, "A better").click().run()
    [lab] = _labels(sqlite_db)
    assert (lab.annotator.name, lab.source) == ("carol", Source.expert)
    with sqlite_db.read() as s:
        assert s.scalar(select(func.count()).select_from(Annotator).where(Annotator.name == "mallory")) == 0


def test_a_name_on_record_with_another_tier_is_refused_by_the_local_form(app_env, sqlite_db: Database,
                                                                         seeded: Seeded) -> None:
    with sqlite_db.write() as s:
        team.add_annotator(s, "dora", "crowd", by="researcher")
    at = AppTest.from_file(MAIN, default_timeout=30).run()
    at.text_input[0].input("dora")
    at.radio[0].set_value("expert")
    at.button[0].click().run()
    assert any("on record as crowd" in e.value for e in at.error)
    assert not [b for b in at.button if b.label == "A better"]
    with sqlite_db.read() as s:
        assert s.scalar(select(Annotator.default_source).where(Annotator.name == "dora")) is Source.crowd


def test_invite_link_labels_with_the_tier_on_record_whatever_the_address_says(app_env, sqlite_db: Database,
                                                                             seeded: Seeded) -> None:
    at = _app("ivan", "crowd", source="expert", annotator="someone-else")
    assert not at.exception
    assert any(m.value == "Labeling as **ivan** (crowd tier)" for m in at.markdown)
    assert any("source=expert" in w.value and "annotator=someone\\-else" in w.value and "ignored" in w.value
               for w in at.warning)  # shown escaped: a name in the address is never Markdown
    assert not [b for b in at.button if b.label == "Switch annotator"]  # a link is one person
    _button(at, "B better").click().run()
    [lab] = _labels(sqlite_db)
    assert (lab.annotator.name, lab.source, lab.origin) == ("ivan", Source.crowd, "app")
    # The researcher makes ivan an expert: the page says so at once and the next label carries it.
    with sqlite_db.write() as s:
        team.set_tier(s, "ivan", "expert", by="researcher", retag=False)
    at.run()
    assert any(m.value == "Labeling as **ivan** (expert tier)" for m in at.markdown)
    _button(at, "A better").click().run()
    assert [(r.annotator.name, r.source) for r in _labels(sqlite_db)] == [("ivan", Source.crowd),
                                                                          ("ivan", Source.expert)]


def test_a_revoked_or_unknown_link_labels_nothing(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    at = _app("rita", "crowd")
    _button(at, "A better").click().run()
    assert len(_labels(sqlite_db)) == 1
    with sqlite_db.write() as s:
        team.revoke(s, "rita", by="researcher")
    _button(at, "A better").click().run()  # a page still open when the link is revoked: the click stores nothing
    assert any("revoked" in e.value for e in at.error)
    assert not [b for b in at.button if b.label == "A better"]
    assert len(_labels(sqlite_db)) == 1
    for token in ("not-a-token", ""):
        fresh = AppTest.from_file(MAIN, default_timeout=30)
        fresh.query_params["invite"] = token
        fresh.run()
        assert not fresh.exception
        assert any("revoked or never existed" in e.value for e in fresh.error)
        assert not [b for b in fresh.button if b.label in ("A better", "Start labeling")]
    assert len(_labels(sqlite_db)) == 1


def test_campaign_link_makes_each_worker_a_crowd_annotator(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    with sqlite_db.write() as s:
        token = team.open_campaign(s, "pilot", by="researcher")

    def visit(**params: str) -> AppTest:
        at = AppTest.from_file(MAIN, default_timeout=30)
        at.query_params["campaign"] = token
        for k, v in params.items():
            at.query_params[k] = v
        return at.run()

    at = visit(PROLIFIC_PID="5f3a9c", source="expert")
    assert any(m.value == "Labeling as **pilot:5f3a9c** (crowd tier)" for m in at.markdown)
    _button(at, "Tie").click().run()
    visit(worker_id="w-2")
    assert visit(PROLIFIC_PID="5f3a9c").session_state["rmstudio_identity"].name == "pilot:5f3a9c"  # same again
    with sqlite_db.read() as s:
        workers = {a.name: a.default_source for a in s.scalars(select(Annotator).where(Annotator.campaign_id.is_not(None)))}
    assert workers == {"pilot:5f3a9c": Source.crowd, "pilot:w-2": Source.crowd}
    assert [(r.annotator.name, r.source) for r in _labels(sqlite_db)] == [("pilot:5f3a9c", Source.crowd)]
    missing = visit()
    assert any("needs your worker id" in e.value for e in missing.error)
    bad = visit(worker_id="<script>")
    assert any("needs your worker id" in e.value for e in bad.error)
    with sqlite_db.write() as s:
        team.close_campaign(s, "pilot", by="researcher")
    closed = visit(PROLIFIC_PID="5f3a9c")
    assert any("campaign is closed" in e.value for e in closed.error)
    assert not [b for b in closed.button if b.label == "A better"]


def test_labelers_without_a_link_get_no_labeling_when_a_token_is_set(app_env, sqlite_db: Database, seeded: Seeded,
                                                                      monkeypatch) -> None:
    monkeypatch.setenv("RMSTUDIO_RESEARCHER_TOKEN", "s3cret")
    at = AppTest.from_file(MAIN, default_timeout=30)
    at.query_params["annotator"] = "alice"
    at.query_params["source"] = "expert"
    at.run()
    assert not at.exception
    assert any("personal link" in i.value for i in at.info)
    assert not [b for b in at.button if b.label in ("A better", "Start labeling", "Undo")]
    with sqlite_db.read() as s:
        assert s.scalar(select(func.count()).select_from(Annotator)) == 0


def test_label_stored_with_source_position_annotator_and_time(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    at = _app("alice", "expert")
    assert not at.exception
    item = at.session_state[ls.ITEM]
    # Side by side, left text first, as drawn by the server.
    bodies = [m.value for m in at.markdown]
    assert bodies.index(defang_links(item.left_text)) < bodies.index(defang_links(item.right_text))
    _button(at, "Clearly").click().run()  # key W
    assert at.session_state[ls.strength_key(item)] == "clearly"
    _button(at, "B better").click().run()
    assert not at.exception
    [lab] = _labels(sqlite_db)
    assert lab.annotator.name == "alice" and lab.source is Source.expert
    assert lab.left == item.left and lab.comparison_id == item.comparison_id
    # "B better" prefers the response shown on the right, whichever stored side that was.
    assert lab.outcome is (Outcome.b if item.left is Side.a else Outcome.a)
    assert lab.strength == 2 and lab.time_spent_ms is not None and lab.time_spent_ms >= 0
    assert lab.idempotency_key == item.key
    # The next pair is already on screen and differs from the labelled one.
    assert at.session_state[ls.ITEM].comparison_id != item.comparison_id
    assert _progress(at).startswith("Today **1** · all time **1** ·")


def _keys(at: AppTest) -> dict[str, str]:
    return {b.label: b.proto.shortcut for b in at.button if b.proto.shortcut}


def _legend(at: AppTest) -> str:
    [legend] = [c.value for c in at.caption if c.value.startswith("Keys: ")]
    return legend


def test_every_action_has_a_key_listed_in_the_legend(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    """Pairs, the flag bar, recent labels and ranking: each button has its key, and the legend under the bar names
    each key of what is on screen."""
    at = _app()
    want = {"A better": "1", "B better": "2", "Tie": "3", "Both bad": "4", "Skip": "5", "Slightly": "q",
            "Clearly": "w", "Undo": "u", "My labels": "b", "Flag": "f"}
    assert _keys(at) == want
    for key in want.values():
        assert f"**{key.upper()}**" in _legend(at)
    _button(at, "Flag").click().run()
    assert _keys(at) == {"Broken": "1", "Offensive": "2", "Needs expertise": "3", "Other": "4", "Cancel": "escape"}
    assert "**1**-**4** the reason" in _legend(at) and "**Esc** cancel" in _legend(at)
    _button(at, "Cancel").click().run()
    _button(at, "A better").click().run()
    _button(at, "My labels").click().run()
    assert _keys(at) == {"A better": "1", "B better": "2", "Tie": "3", "Both bad": "4", "Slightly": "q",
                         "Clearly": "w", "Older": "b", "Newer": "n", "Back to labeling": "escape"}
    assert all(f"**{k}**" in _legend(at) for k in ("B", "N", "Esc"))
    _button(at, "Back to labeling").click().run()
    at.segmented_control(key="lbl_mode").set_value("rank").run()
    k = len(at.session_state[ls.TASK].response_ids)
    assert _keys(at) == {**{f"Response {i}": str(i) for i in range(1, k + 1)}, "Submit ranking": "enter",
                         "Take back": "backspace", "Skip": "s", "Undo": "u"}
    assert all(f"**{k}**" in _legend(at) for k in ("Backspace", "Enter", "S", "U"))


def test_strength_keys_choose_clear_and_only_count_for_a_preference(app_env, sqlite_db: Database,
                                                                   seeded: Seeded) -> None:
    at = _app("sol", "crowd")
    item = at.session_state[ls.ITEM]
    _button(at, "Slightly").click().run()
    assert at.session_state[ls.strength_key(item)] == "slightly"
    assert [b.proto.type for b in at.button if b.label in ("Slightly", "Clearly")] == ["primary", "secondary"]
    _button(at, "Slightly").click().run()  # the same key again clears it
    assert at.session_state[ls.strength_key(item)] is None
    _button(at, "Clearly").click().run()
    _button(at, "Slightly").click().run()  # the other key replaces it
    _button(at, "A better").click().run()
    second = at.session_state[ls.ITEM]
    assert at.session_state.get(ls.strength_key(second)) is None  # a new pair starts without one
    _button(at, "Clearly").click().run()
    _button(at, "Tie").click().run()  # no strength for a tie
    assert [(lab.outcome in (Outcome.a, Outcome.b), lab.strength) for lab in _labels(sqlite_db)] == [
        (True, 1), (False, None)]


def test_the_next_pair_is_drawn_while_the_labeler_reads(app_env, sqlite_db: Database, seeded: Seeded,
                                                        monkeypatch) -> None:
    """The pair after the one on screen is prepared when the area is drawn; a verdict shows exactly that one, and
    a skip too. It never repeats the pair on screen."""
    at = _app("pia", "crowd")
    for press in ("A better", "Skip", "Tie"):
        item = at.session_state[ls.ITEM]
        job = at.session_state[ls.NEXT]
        assert job.done.wait(10) and job.error is None  # drawn in the background, after a pause
        assert job.after == item.key and job.item.comparison_id != item.comparison_id
        if press == "Tie":  # the draw after this one waits long: the next verdict comes first
            monkeypatch.setattr(ls, "PREFETCH_DELAY_S", 30.0)
        _button(at, press).click().run()
        assert at.session_state[ls.ITEM].comparison_id == job.item.comparison_id
        assert at.session_state[ls.ITEM].shown_at >= item.shown_at
    # Streamlit's full collection after each run only walks what was made since the page first ran: the loaded
    # libraries' objects are frozen once (a full walk of them took 100-150 ms and held back the new pair).
    assert gc.get_freeze_count() > 100_000
    # A verdict before the draw has started draws the next pair itself; the late draw is dropped.
    item = at.session_state[ls.ITEM]
    job = at.session_state[ls.NEXT]
    _button(at, "B better").click().run()
    assert job.dropped and not job.done.is_set()
    assert at.session_state[ls.ITEM].comparison_id not in (item.comparison_id, None)


def test_undo_removes_my_label_and_shows_the_pair_again(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    other = _app("bob", "crowd")
    _button(other, "Tie").click().run()
    at = _app("alice", "crowd")
    first = at.session_state[ls.ITEM]
    _button(at, "A better").click().run()
    assert len(_labels(sqlite_db)) == 2
    _button(at, "Undo").click().run()
    assert not at.exception
    remaining = _labels(sqlite_db)
    assert [(r.annotator.name, r.outcome) for r in remaining] == [("bob", Outcome.tie)]  # bob's label stays
    assert at.session_state[ls.ITEM].comparison_id == first.comparison_id
    with sqlite_db.read() as s:
        assert s.get(Comparison, first.comparison_id).label_count == 0  # bob labelled another pair (fewest first)


def test_undo_never_reaches_labels_this_session_did_not_make(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    """The name-based undo hole: a session that carries another annotator's name (in the address, or even their own
    link opened in a second browser) and presses Undo removes nothing of theirs."""
    token = invite("bob", "crowd")
    bob = _open(invite=token)
    for _ in range(2):
        _button(bob, "A better").click().run()
    before = [r.idempotency_key for r in _labels(sqlite_db)]
    assert len(before) == 2
    _local_app("me")
    intruders = [
        _open(annotator="bob", source="crowd"),  # the address names bob; the session is the researcher's own
        _open(invite=invite("eve", "crowd"), annotator="bob"),  # another labeler's link, bob's name appended
        _open(invite=token),  # bob's own link in a second browser: that session stored nothing
    ]
    for at in intruders:
        for _ in range(3):
            _button(at, "Undo").click().run()
            assert not at.exception
        assert [r.idempotency_key for r in _labels(sqlite_db)] == before
    # bob's first session still takes back its own newest label, and only that
    _button(bob, "Undo").click().run()
    assert [r.idempotency_key for r in _labels(sqlite_db)] == before[:1]


def test_flag_a_pair_i_cannot_judge(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    at = _app("fay", "crowd")
    item = at.session_state[ls.ITEM]
    _button(at, "Flag").click().run()  # key F: the reasons replace the verdicts, each on its own key
    assert not [b for b in at.button if b.label == "A better"]
    _button(at, "Cancel").click().run()  # Esc: back to the verdicts, nothing stored
    assert [b for b in at.button if b.label == "A better"] and at.session_state[ls.ITEM].key == item.key
    _button(at, "Flag").click().run()
    at.text_input(key=ls.flag_comment_key(item)).input("medical dosage question")
    _button(at, "Needs expertise").click().run()  # key 3
    assert not at.exception
    assert at.session_state[ls.ITEM].comparison_id != item.comparison_id  # moved on
    assert _labels(sqlite_db) == []
    with sqlite_db.read() as s:
        [flag] = s.scalars(select(ReviewFlag)).all()
        assert (flag.comparison_id, flag.reason, flag.comment, flag.created_by, flag.resolved_at) == (
            item.comparison_id, FlagReason.needs_expertise, "medical dosage question", "fay", None)
        assert flag.annotator_id == s.scalar(select(Annotator.id).where(Annotator.name == "fay"))
        # a flagged pair leaves everyone's queue until a researcher resolves it
        seen = set()
        for _ in range(50):
            nxt = next_pair(s, "someone", QueuePolicy(), exclude=list(seen))
            if nxt is None:
                break
            seen.add(nxt.comparison_id)
        assert item.comparison_id not in seen and len(seen) == len(seeded.comparison_ids) - 1


def test_double_submit_stores_one_label(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    at = _app()
    item = at.session_state[ls.ITEM]
    _button(at, "A better").click().run()
    # A double click: the second event hits the same widget (key left_<item key>) with the same item, as when it
    # races the first rerun. Put the old view back and click again, once with the page's guard and once with the
    # guard cleared (then only the store's idempotency key stands between us and a second label).
    for clear_guard in (False, True):
        at.session_state[ls.ITEM] = item
        if clear_guard:
            at.session_state[ls.DONE] = set()
        at.run()
        assert at.session_state[ls.ITEM].key == item.key
        _button(at, "A better").click().run()
        assert not at.exception
    labs = _labels(sqlite_db)
    assert len(labs) == 1 and labs[0].comparison_id == item.comparison_id and labs[0].idempotency_key == item.key
    with sqlite_db.read() as s:
        assert s.get(Comparison, item.comparison_id).label_count == 1


def test_skip_moves_on_without_a_label(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    at = _app()
    first = at.session_state[ls.ITEM]
    _button(at, "Skip").click().run()
    assert at.session_state[ls.ITEM].comparison_id != first.comparison_id
    assert _labels(sqlite_db) == []


def test_untrusted_html_and_script_links_are_shown_as_text(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    at = AppTest.from_file(MAIN, default_timeout=30)
    at.query_params["invite"] = invite("alice")
    with sqlite_db.read() as s:
        at.session_state[ls.ITEM] = item_for_comparison(s, seeded.xss_comparison_ids[0])
    at.run()
    assert not at.exception
    md = {m.value: m.proto.allow_html for m in at.markdown}
    assert md[XSS_SCRIPT] is False and md[XSS_IMG] is False
    assert [m.value for m in at.markdown if m.proto.allow_html] == [label_view.CSS]  # the page's own layout only
    assert not at.get("html")  # no st.html element anywhere
    with sqlite_db.read() as s:
        at.session_state[ls.ITEM] = item_for_comparison(s, seeded.xss_comparison_ids[1])
    at.run()
    bodies = [m.value for m in at.markdown]
    assert XSS_LINK not in bodies  # the raw link is never rendered as a link...
    assert r"\[click me\]\(javascript:alert(1))" in bodies  # ...but escaped, so it shows as its text
    assert all(not m.proto.allow_html for m in at.markdown if m.value != label_view.CSS)


def _rank_mode(at: AppTest):
    at.segmented_control(key="lbl_mode").set_value("rank").run()
    assert not at.exception
    return at.session_state[ls.TASK]


def test_ranking_mode_stores_the_order(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    at = _app("dana", "crowd")
    task = _rank_mode(at)
    assert task.prompt_id == seeded.ranking_prompt_id
    k = len(task.response_ids)
    assert not at.multiselect  # no dropdown to close before submitting
    # One "Rank" control per displayed response, each offering 1..K, none chosen yet. Submit is never disabled (a
    # click during the rerun of the last rank choice must not be swallowed): an early click stores nothing.
    for i in range(k):
        ctl = at.segmented_control(key=rs.rank_key(task, i))
        assert ctl.label == f"Rank of Response {i + 1}" and ctl.options == [str(r) for r in range(1, k + 1)]
        assert ctl.value is None
    assert not _button(at, "Submit ranking").disabled
    ranks = [3, 1, 4, 2]  # Response 2 best, then 4, 1, 3: neither the display order nor its reverse
    for i, r in enumerate(ranks):
        at.segmented_control(key=rs.rank_key(task, i)).set_value(r).run()
        assert not at.exception
        if i == k - 2:  # one rank missing: a click now is refused with the reason, nothing stored
            _button(at, "Submit ranking").click().run()
            assert [e.value for e in at.error] == ["Ranking not saved. Response 4 has no rank yet."]
            with sqlite_db.read() as s:
                assert s.scalar(select(func.count()).select_from(Ranking)) == 0
    _button(at, "Submit ranking").click().run()
    assert not at.exception
    want = [task.response_ids[i] for i in (1, 3, 0, 2)]
    with sqlite_db.read() as s:
        rk = s.scalars(select(Ranking)).one()
        assert [i.response_id for i in rk.items] == want and [i.rank for i in rk.items] == [1, 2, 3, 4]
        assert rk.source is Source.crowd and rk.annotator.name == "dana"  # read inside the session
        assert rk.idempotency_key == task.key and rk.extra == {"shown_order": list(task.response_ids)}
    assert at.session_state[ls.TASK] is None  # only one rankable prompt
    assert any("No prompt left for you to rank" in m.value for m in at.success)
    assert _progress(at).startswith("Today **1** · all time **1** ·")  # rankings count


def test_ranking_hint_names_what_is_missing_or_duplicated(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    at = _app("dana", "crowd")
    task = _rank_mode(at)

    def hint() -> list[str]:
        return [c.value for c in at.caption if "rank" in c.value.lower() and not c.value.startswith("Keys: ")]

    assert hint() == ["Responses 1, 2, 3 and 4 have no rank yet."]
    for i, r in enumerate([1, 2, 2]):
        at.segmented_control(key=rs.rank_key(task, i)).set_value(r).run()
    assert hint() == ["Response 4 has no rank yet; rank 2 is used twice."]
    at.segmented_control(key=rs.rank_key(task, 3)).set_value(4).run()
    assert hint() == ["Rank 2 is used twice; rank 3 is missing."]
    at.segmented_control(key=rs.rank_key(task, 2)).set_value(3).run()  # fixed: a permutation of 1..4
    assert hint() == []
    at.segmented_control(key=rs.rank_key(task, 0)).set_value(None).run()  # a rank can be taken back
    assert hint() == ["Response 1 has no rank yet."]
    with sqlite_db.read() as s:
        assert s.scalar(select(func.count()).select_from(Ranking)) == 0


def test_ranking_double_submit_and_stale_incomplete_click(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    """A second click with the old task stores nothing more (page guard, then the store's key); a click that
    reaches the callback with incomplete ranks stores nothing and says why."""
    at = _app("dana", "crowd")
    task = _rank_mode(at)
    for i, r in enumerate([1, 2, 3, 4]):
        at.segmented_control(key=rs.rank_key(task, i)).set_value(r)
    at.run()
    # Rank 2 changed to 1 and Submit clicked in the same rerun: both reach the server together.
    at.segmented_control(key=rs.rank_key(task, 1)).set_value(1)
    _button(at, "Submit ranking").click().run()
    assert not at.exception
    assert any(e.value == "Ranking not saved. Rank 1 is used twice; rank 2 is missing." for e in at.error)
    assert at.session_state[ls.TASK].key == task.key
    at.segmented_control(key=rs.rank_key(task, 1)).set_value(2).run()
    _button(at, "Submit ranking").click().run()
    assert not at.exception and not at.error  # the saved ranking clears the earlier error
    for clear_guard in (False, True):
        at.session_state[ls.TASK] = task
        if clear_guard:
            at.session_state[ls.DONE] = set()
        at.run()
        for i, r in enumerate([1, 2, 3, 4]):
            at.segmented_control(key=rs.rank_key(task, i)).set_value(r)
        at.run()
        _button(at, "Submit ranking").click().run()
        assert not at.exception
    with sqlite_db.read() as s:
        rk = s.scalars(select(Ranking)).one()
        assert rk.idempotency_key == task.key and [i.response_id for i in rk.items] == list(task.response_ids)


def test_ranking_skip_moves_on_without_a_ranking(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    at = _app("dana", "crowd")
    task = _rank_mode(at)
    at.segmented_control(key=rs.rank_key(task, 0)).set_value(1).run()
    _button(at, "Skip").click().run()
    assert not at.exception
    assert at.session_state[ls.TASK] is None and at.session_state[ls.RSKIPPED] == [task.prompt_id]
    with sqlite_db.read() as s:
        assert s.scalar(select(func.count()).select_from(Ranking)) == 0


def test_empty_database_teaches(app_env, sqlite_db: Database) -> None:
    at = _app()
    assert not at.exception
    assert any("rmstudio seed-demo" in i.value for i in at.info)


def test_labeler_with_a_link_sees_only_label_page_with_token(app_env, sqlite_db: Database, seeded: Seeded,
                                                              monkeypatch) -> None:
    monkeypatch.setenv("RMSTUDIO_RESEARCHER_TOKEN", "s3cret")
    at = _app()
    assert not at.exception and any(b.label == "A better" for b in at.button)
    with sqlite_db.read() as s:
        assert s.scalar(select(func.count()).select_from(Label)) == 0


def test_label_page_on_postgres(app_env, pg_db: Database) -> None:
    """The same page against PostgreSQL: a label with the right source, position and annotator; undo."""
    from tests.app.conftest import seed_small

    seed_small(pg_db)
    at = _app("pat", "crowd", source="expert")
    assert not at.exception
    item = at.session_state[ls.ITEM]
    _button(at, "A better").click().run()
    [lab] = _labels(pg_db)
    assert (lab.annotator.name, lab.source, lab.left) == ("pat", Source.crowd, item.left)
    assert lab.outcome is Outcome(item.left.value)
    _button(at, "Undo").click().run()
    assert _labels(pg_db) == []


def test_ranking_undo_brings_the_prompt_back_as_it_was_ranked(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    """Undo deletes my ranking and shows the prompt again unchanged: the same display order, every rank as given
    (before, the responses were reshuffled and every rank cleared); submitting again stores the same order."""
    at = _app("dana", "crowd")
    task = _rank_mode(at)
    ranks = [2, 4, 1, 3]
    for i, r in enumerate(ranks):
        at.segmented_control(key=rs.rank_key(task, i)).set_value(r)
    at.run()
    _button(at, "Submit ranking").click().run()

    def stored() -> list[list[int]]:
        with sqlite_db.read() as s:
            return [[i.response_id for i in r.items] for r in s.scalars(select(Ranking))]

    [first] = stored()
    assert at.session_state[ls.TASK] is None  # the done screen offers the undo
    _button(at, "Undo my last ranking").click().run()
    back = at.session_state[ls.TASK]
    assert stored() == [] and back.prompt_id == task.prompt_id and back.key != task.key
    assert back.response_ids == task.response_ids and back.texts == task.texts  # same order on screen
    assert [at.segmented_control(key=rs.rank_key(back, i)).value for i in range(4)] == ranks
    assert not at.exception
    _button(at, "Submit ranking").click().run()  # Enter: stored again, identical
    assert stored() == [first]
    _button(at, "Undo my last ranking").click().run()
    _button(at, "Undo").click().run()  # the in-task Undo: nothing of mine is left to take back
    assert stored() == [] and at.session_state[ls.TASK].prompt_id == task.prompt_id
    assert not at.exception


def test_ranking_by_keys_digits_in_order_backspace_and_enter(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    """Digit i gives Response i the best rank not given yet; a response that has a rank keeps it; Backspace takes
    back the highest rank given; Enter submits. (The buttons carry these keys; AppTest clicks them.)"""
    at = _app("kit", "crowd")
    task = _rank_mode(at)

    def ranks() -> list[int | None]:
        return [at.segmented_control(key=rs.rank_key(task, i)).value for i in range(len(task.response_ids))]

    def press(label: str) -> list[int | None]:
        _button(at, label).click().run()
        assert not at.exception
        return ranks() if at.session_state[ls.TASK] else []

    assert press("Response 3") == [None, None, 1, None]
    assert press("Response 1") == [2, None, 1, None]
    assert press("Response 3") == [2, None, 1, None]  # already ranked: unchanged
    assert press("Response 4") == [2, None, 1, 3]
    assert press("Take back") == [2, None, 1, None]
    assert press("Take back") == [None, None, 1, None]
    for label in ("Response 2", "Response 4", "Response 1"):
        press(label)
    assert ranks() == [4, 2, 1, 3]
    press("Submit ranking")
    with sqlite_db.read() as s:
        rk = s.scalars(select(Ranking)).one()
        assert [i.response_id for i in rk.items] == [task.response_ids[i] for i in (2, 1, 3, 0)]


def _step_back_setup(sqlite_db: Database) -> tuple[AppTest, list]:
    other = _app("bob", "crowd")
    _button(other, "Tie").click().run()  # someone else's label: never listed, never changeable here
    at = _app("lea", "crowd")
    shown = []
    for verdict in ("A better", "B better", "Both bad"):
        shown.append(at.session_state[ls.ITEM])
        _button(at, verdict).click().run()
    return at, shown


def test_step_back_through_my_labels_and_change_one(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    """B steps back through my own labels, newest first, each shown as I saw it with my verdict; 1-4 change it: a
    new label supersedes the old one (kept, audited), training uses only the new one, the pair still counts one
    label of mine; N / Esc go back to the queue where I left it."""
    at, shown = _step_back_setup(sqlite_db)
    at_queue = at.session_state[ls.ITEM]
    _button(at, "My labels").click().run()
    assert any("My label 1 of the last 3" in i.value and "**Both bad**" in i.value for i in at.markdown)
    bodies = [m.value for m in at.markdown]
    assert defang_links(shown[2].left_text) in bodies and defang_links(shown[2].right_text) in bodies
    assert [b.proto.type for b in at.button if b.label in ls.VERDICTS.values()] == [
        "secondary", "secondary", "secondary", "primary"]  # my verdict stands out
    _button(at, "Older").click().run()
    assert any("My label 2 of the last 3" in i.value and "**B better**" in i.value for i in at.markdown)
    middle = shown[1]
    b = [m.value for m in at.markdown]
    assert b.index(defang_links(middle.left_text)) < b.index(defang_links(middle.right_text))  # same sides as then
    _button(at, "Slightly").click().run()
    _button(at, "A better").click().run()  # changed: now the left one, slightly
    assert not at.exception
    assert any("**A better** (slightly) (changed)" in i.value for i in at.markdown)

    labs = {lab.id: lab for lab in _labels(sqlite_db)}
    [old] = [x for x in labs.values() if x.idempotency_key == middle.key]
    new = labs[old.superseded_by_id]
    assert (new.comparison_id, new.annotator.name, new.left, new.strength) == (middle.comparison_id, "lea",
                                                                              middle.left, 1)
    assert new.outcome is Outcome(middle.left.value) and new.extra["supersedes"] == old.id
    assert old.outcome is not new.outcome and new.superseded_by_id is None
    with sqlite_db.read() as s:
        assert s.get(Comparison, middle.comparison_id).label_count == 1
        [ev] = s.scalars(select(AuditEvent).where(AuditEvent.action == "supersede")).all()
        assert (ev.actor, ev.label_id, ev.comparison_id, ev.detail["replaces"]) == ("lea", new.id,
                                                                                    middle.comparison_id, old.id)
        ps = training_pairs(s)
    assert sorted(p.label_id for p in ps.pairs) == sorted(
        lab.id for lab in labs.values() if lab.id != old.id and lab.outcome is not Outcome.both_bad)
    assert ps.excluded["superseded"] == 1

    _button(at, "Tie").click().run()  # changed again: the new label is superseded in turn
    with sqlite_db.read() as s:
        current = s.scalars(select(Label).where(Label.comparison_id == middle.comparison_id,
                                                Label.superseded_by_id.is_(None))).all()
        assert [c.outcome for c in current] == [Outcome.tie]
    _button(at, "Newer").click().run()
    _button(at, "Newer").click().run()  # past the newest: the queue, on the pair I had not labelled yet
    assert at.session_state[ls.ITEM].key == at_queue.key
    assert any(b.label == "My labels" for b in at.button)
    _button(at, "My labels").click().run()
    _button(at, "Back to labeling").click().run()  # Esc
    assert at.session_state[ls.ITEM].key == at_queue.key
    assert [lab.annotator.name for lab in _labels(sqlite_db)].count("bob") == 1


def test_only_my_own_current_labels_can_be_changed(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    """Another labeler's labels are never listed; a label a researcher excluded is shown but refuses a change;
    pressing the verdict it already has changes nothing."""
    at, shown = _step_back_setup(sqlite_db)
    _button(at, "My labels").click().run()
    listed = at.session_state[ls.RECENT]
    assert {r.comparison_id for r in listed} == {i.comparison_id for i in shown}
    _button(at, "Both bad").click().run()  # the verdict it has
    assert any("Not changed: that is the verdict already stored" in e.value for e in at.error)
    with sqlite_db.write() as s:
        review.exclude_label(s, listed[0].label_id, by="researcher")
    _button(at, "Tie").click().run()
    assert any("excluded from training by a researcher" in e.value for e in at.error)
    assert all(lab.superseded_by_id is None for lab in _labels(sqlite_db))


def test_undo_never_takes_back_a_label_i_changed(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    """Undo (U) takes back queue labels only: once a label's verdict was changed, its stored replacement stays and
    Undo moves on to the label before."""
    at, shown = _step_back_setup(sqlite_db)
    _button(at, "My labels").click().run()
    _button(at, "Tie").click().run()  # changes the newest label (Both bad -> Tie)
    _button(at, "Back to labeling").click().run()
    _button(at, "Undo").click().run()
    assert at.session_state[ls.ITEM].comparison_id == shown[1].comparison_id
    mine = [lab for lab in _labels(sqlite_db) if lab.annotator.name == "lea"]
    assert sorted((lab.comparison_id, lab.outcome, lab.superseded_by_id is None) for lab in mine) == sorted([
        (shown[0].comparison_id, Outcome(shown[0].left.value), True),
        (shown[2].comparison_id, Outcome.both_bad, False), (shown[2].comparison_id, Outcome.tie, True)])


def test_guidelines_written_on_the_data_page_reach_labelers(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    """Researchers save guidelines (Data page); the Label page opens them until "Got it", then again for a new
    revision. Their Markdown is rendered as text where it holds HTML."""
    at = _app()
    assert not [e for e in at.expander if "guidelines" in e.label]  # none written yet
    data = AppTest.from_file(str(PAGES / "data.py"), default_timeout=60).run()
    [box] = [t for t in data.text_area if t.label == "Guidelines (Markdown)"]
    box.input("**Correctness first.** A tie only when both are equally good. <script>window.x=1</script>")
    [save] = [b for b in data.button if b.label == "Save guidelines"]
    save.click().run()
    assert any("revision 1" in m.value for m in data.success)

    at.run()
    [exp] = [e for e in at.expander if e.label.startswith("Labeling guidelines")]
    assert exp.label == "Labeling guidelines (revision 1, new)"
    assert any("Correctness first" in m.value for m in exp.markdown)
    assert not any(m.proto.allow_html for m in exp.markdown)  # the <script> stays text
    _button(at, "Got it").click().run()
    [exp] = [e for e in at.expander if e.label.startswith("Labeling guidelines")]
    assert exp.label == "Labeling guidelines (revision 1)" and not [b for b in at.button if b.label == "Got it"]
    assert at.query_params["guidelines"] == "1"
    again = _local_app("me")  # the researcher's own machine
    again.query_params["guidelines"] = "1"
    again.run()
    assert [e.label for e in again.expander if e.label.startswith("Labeling")] == ["Labeling guidelines (revision 1)"]
    _button(again, "Switch annotator").click().run()  # the next labeler has not read them
    assert "guidelines" not in again.query_params

    with sqlite_db.write() as s:
        set_guidelines(s, "Revised: prefer shorter answers when equally correct.")
    at.run()
    [exp] = [e for e in at.expander if e.label.startswith("Labeling guidelines")]
    assert exp.label == "Labeling guidelines (revision 2, new)"
