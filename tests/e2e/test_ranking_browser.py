"""The Label page's ranking mode in a real browser: a named annotator switches to "Rank 3+ responses" and ranks
each prompt's responses, by clicks on the one-click "Rank" control under each response, or by keys only: digit i gives
Response i the next rank, Backspace takes the last one back, Enter submits. A click on Submit right after the last rank
choice is enough (on one prompt it comes at once, while the last choice's rerun still runs). A duplicated rank shows a
hint naming it, and a Submit click then stores nothing and says why. Undo (U) brings the last ranking back exactly as
it was: the same display order and the same ranks, ready to submit again. The database holds exactly the order given,
with the annotator, source and the server-drawn display order; a double click on "Submit ranking" stores one ranking;
the K(K-1)/2 training pairs follow the order; untrusted response text (``<script>``, Markdown) renders as
text/Markdown, never as a script; rankings count in the labeler's progress line. A full-page screenshot of the hostile
response with the chosen ranks goes to tmp_path.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from db.exporter import native_records
from db.importer import import_file
from db.pairs import training_pairs
from db.session import Database
from tests.e2e.conftest import app_env, streamlit_server, wait_idle

# A line starting with <script> opens a CommonMark HTML block up to </script>: shown as literal text (HTML is
# never allowed); the Markdown paragraph after it renders as Markdown.
HOSTILE = "<script>alert(1)</script>\n\nEcho says: **bold** move."
# Each response carries one unique code word, so the test can tell which stored response a column shows.
PROMPTS: list[tuple[str, list[str]]] = [
    ("Name a primary colour.", ["Alpha: red.", "Bravo: blue is one.", "Charlie: yellow (RYB).", HOSTILE]),
    ("Suggest a name for a cat.", ["Delta: Whiskers.", "Foxtrot: Mittens.", "Golf: Sir Purrington."]),
    ("What is 2 + 2?", ["Hotel: 4.", "India: four, in base ten.", "Juliet: 22 if concatenated."]),
]
WORDS = {t: t.split(":")[0] if t != HOSTILE else "Echo" for _, rs in PROMPTS for t in rs}
NAME = "e2e-ranker"
DONE_TEXT = "No prompt left for you to rank"


def _seed(home: Path) -> str:
    """The prompts through the importer (``unlabeled`` JSONL: prompts, responses and their comparisons)."""
    url = f"sqlite:///{home / 'rmstudio.db'}"
    f = home / "rank.jsonl"
    f.write_text("".join(json.dumps({"prompt": p, "responses": rs, "category": "rank-e2e"}) + "\n" for p, rs in PROMPTS))
    db = Database(url)
    rep = import_file(db, f, format="unlabeled")
    assert rep.records == len(PROMPTS)
    db.dispose()
    return url


def _prompt(page: Any, timeout: float = 20_000) -> str:
    msg = page.locator('[data-testid="stChatMessage"]').last
    return msg.locator('[data-testid="stMarkdownContainer"]').inner_text(timeout=timeout).strip()


def _wait_prompt_change(page: Any, old: str, timeout: float = 20.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if page.get_by_text(DONE_TEXT).count():
                return ""
            new = _prompt(page, timeout=500)
            if new and new != old:
                wait_idle(page)
                return new
        except Exception:  # noqa: BLE001 - the element is being replaced
            pass
        time.sleep(0.1)
    raise AssertionError(f"the next prompt did not replace {old!r} within {timeout} s")


def _displayed(page: Any) -> list[str]:
    """The stored text shown in the panes of "Response 1", "Response 2", ... (in display order), by code word."""
    shown: list[str] = []
    panes = page.locator('[class*="st-key-lbl_pane_r"]:not([data-stale="true"])')
    for i in range(panes.count()):
        body = panes.nth(i).locator('[data-testid="stMarkdown"]').inner_text()
        hits = [t for t, w in WORDS.items() if body.strip().startswith(w) or (w == "Echo" and "Echo says" in body)]
        assert len(hits) == 1, f"Response {i + 1} shows {body!r}"
        shown.append(hits[0])
    return shown


def _rank_group(page: Any, i: int) -> Any:
    """The "Rank" control under "Response i" (a radiogroup of buttons 1..K), the live one: while a rerun moves
    elements (an error message above them appears or goes), Streamlit keeps the stale copy until the run ends."""
    return page.locator('[data-testid="stElementContainer"]:not([data-stale="true"])').get_by_role(
        "radiogroup", name=f"Rank of Response {i}", exact=True)


def _progress(page: Any) -> tuple[int, int]:
    """(today, all time) from the progress line above the prompt."""
    text = page.get_by_text(re.compile(r"^Today \d+")).first.inner_text()
    m = re.match(r"Today (\d+) · all time (\d+)", text)
    assert m, text
    return int(m.group(1)), int(m.group(2))


def _submit(page: Any) -> Any:
    return page.locator('[data-testid="stButton"] button', has_text="Submit ranking")


def _rank_by_click(page: Any, i: int, rank: int) -> None:
    _rank_group(page, i).get_by_role("radio", name=str(rank), exact=True).click()


def _press(page: Any, key: str) -> None:
    """A key at a person's pace: after the previous rerun, with no widget focused."""
    wait_idle(page)
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.keyboard.press(key)


def _rank_by_keys(page: Any, i: int, rank: int) -> None:
    """Key ``i`` gives Response i the next rank: the caller presses in rank order."""
    _press(page, str(i))
    _checked(page, i, rank)


def _checked(page: Any, i: int, rank: int, timeout: float = 10_000) -> None:
    from playwright.sync_api import expect  # imported here: without playwright the module still collects (skip)

    expect(_rank_group(page, i).get_by_role("radio", name=str(rank), exact=True)).to_have_attribute(
        "aria-checked", "true", timeout=timeout)


def _give_ranks(page: Any, ranks: list[int], by_keys: bool, *, detour: bool, immediate: bool = False) -> None:
    """Rank each displayed response (``ranks[i]`` for "Response i+1"), one click or key press each. ``detour``:
    first give the last response a rank already used, check the hint and that Submit refuses it, then fix it.
    ``immediate``: return right after the last choice, as a labeler who clicks Submit at once."""
    from playwright.sync_api import expect

    k = len(ranks)
    if by_keys:  # digit keys give ranks in order: press the responses best first
        for r in range(1, k + 1):
            _rank_by_keys(page, ranks.index(r) + 1, r)
        for i, r in enumerate(ranks, start=1):
            _checked(page, i, r)
        return
    pick = _rank_by_click
    for i, r in enumerate(ranks[:-1], start=1):
        pick(page, i, r)
    if detour:
        dup, lost = ranks[0], ranks[-1]
        pick(page, k, dup)
        expect(page.get_by_text(f"Rank {dup} is used twice; rank {lost} is missing.", exact=True)).to_be_visible(
            timeout=10_000)
        _submit(page).click()
        expect(page.get_by_text(f"Ranking not saved. Rank {dup} is used twice; rank {lost} is missing.",
                                exact=True)).to_be_visible(timeout=10_000)
        wait_idle(page)
    pick(page, k, ranks[-1])
    for i, r in enumerate(ranks, start=1):
        _checked(page, i, r)
    assert page.locator('[role="listbox"]').count() == 0  # no dropdown to close before Submit
    if immediate:
        return
    for hint in ("no rank yet", "is used"):  # the rerun after the last choice clears the hint
        expect(page.get_by_text(hint)).to_have_count(0, timeout=10_000)
    wait_idle(page)


def _rankings(url: str) -> list[dict[str, Any]]:
    db = Database(url)
    try:
        with db.read() as s:
            return [r for r in native_records(s, None) if "ranking" in r]
    finally:
        db.dispose()


def _check_xss(page: Any, dialogs: list[str]) -> bool:
    """No script ran; True when the hostile response is on screen, shown as text with its Markdown rendered."""
    assert not dialogs, f"a response's script opened a dialog: {dialogs}"
    assert page.evaluate("() => [...document.scripts].some(s => s.textContent.includes('alert(1)'))") is False
    if not page.get_by_text("Echo says").count():
        return False
    page.get_by_text("<script>alert(1)</script>", exact=False).first.wait_for(timeout=5_000)  # literal text
    strong = page.locator('[data-testid="stMarkdownContainer"] strong', has_text="bold")
    assert strong.count() == 1 and strong.inner_text() == "bold", "the Markdown **bold** was not rendered"
    assert page.get_by_text("**bold**").count() == 0
    return True


@pytest.mark.timeout(180)
def test_rank_mode_in_browser(browser: Any, home: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    url_db = _seed(home)
    env = app_env(home)
    server, url = streamlit_server(home, env)
    ctx = browser.new_context(viewport={"width": 1366, "height": 768})
    dialogs: list[str] = []
    try:
        page = ctx.new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(url)
        page.get_by_label("Your name").fill(NAME)
        page.get_by_text("expert", exact=True).click()
        page.get_by_role("button", name="Start labeling").click()
        page.get_by_role("button", name="A better").wait_for(timeout=30_000)  # pairs mode first
        wait_idle(page)
        page.locator('[data-testid="stButtonGroup"]').get_by_text("Rank 3+ responses", exact=True).click()
        submit = _submit(page)
        submit.wait_for(timeout=20_000)
        wait_idle(page)
        assert page.get_by_role("button", name="A better").count() == 0

        seen_hostile = False
        shown_ids: list[list[int]] = []
        shown_texts: list[list[str]] = []
        chosen_texts: list[list[str]] = []
        prompt = _prompt(page)
        ranked_prompts: list[str] = []
        for step in range(len(PROMPTS)):
            hostile_here = _check_xss(page, dialogs)
            seen_hostile = seen_hostile or hostile_here
            shown = _displayed(page)
            assert sorted(shown) == sorted(dict(PROMPTS)[prompt]), (prompt, shown)
            k = len(shown)
            perm = [1, 2, 0] if k == 3 else [2, 0, 3, 1]  # neither the display order nor its reverse
            order = [shown[i] for i in perm]
            assert page.get_by_text("have no rank yet").count() == 1  # the hint names the unranked responses
            ranks = [perm.index(i) + 1 for i in range(k)]  # the rank of "Response i+1"
            immediate = step == len(PROMPTS) - 1  # Submit clicked while the last choice's rerun still runs
            if hostile_here and immediate:  # no pause after the ranks here: the screenshot shows them unchosen
                page.screenshot(path=str(tmp_path / "ranking.png"), full_page=True)
            by_keys = step == 1
            _give_ranks(page, ranks, by_keys=by_keys, detour=step == 0, immediate=immediate)
            if not immediate:
                assert submit.is_enabled()
                assert page.locator('[data-testid="stException"]').count() == 0
                assert page.get_by_text("Could not save").count() == 0
                assert page.get_by_text("no rank yet").count() == 0 and page.get_by_text("is used").count() == 0
                assert submit.is_visible() and page.get_by_role("button", name="Skip").is_visible()
            if hostile_here and not immediate:  # the screenshot shows the hostile response, the rank controls with the chosen ranks
                path = tmp_path / "ranking.png"
                page.screenshot(path=str(path), full_page=True)
                assert path.stat().st_size > 10_000
            if by_keys:  # keyboard only: Enter submits; U brings it back unchanged; Backspace, digits, Enter again
                _press(page, "Enter")
                before = prompt
                prompt = _wait_prompt_change(page, prompt)
                assert len(_rankings(url_db)) == step + 1
                _press(page, "u")
                back = _wait_prompt_change(page, prompt)
                assert back == before and _rankings(url_db)[step:] == []
                assert _displayed(page) == shown, "undo changed the display order"
                for i, r in enumerate(ranks, start=1):  # every rank as given
                    _checked(page, i, r)
                last_two = sorted(range(k), key=lambda i: ranks[i])[-2:]
                _press(page, "Backspace")
                _press(page, "Backspace")
                for i in last_two:
                    expect(_rank_group(page, i + 1).locator('[aria-checked="true"]')).to_have_count(0, timeout=10_000)
                for i in last_two:  # the same ranks again, in order
                    _rank_by_keys(page, i + 1, ranks[i])
                prompt = before
                _press(page, "Enter")
            elif step == 0:
                submit.dblclick()  # a double click stores one ranking
            else:
                submit.click()  # one click, right after the last rank choice, is enough
            ranked_prompts.append(prompt)
            prompt = _wait_prompt_change(page, prompt)
            assert prompt not in ranked_prompts, f"{prompt!r} was shown again after being ranked"
            chosen_texts.append(order)
            stored = _rankings(url_db)
            assert len(stored) == step + 1, f"{len(stored)} rankings stored after {step + 1} submits"
            r = stored[-1]
            assert [x["text"] for x in r["responses"]] == order, "stored order differs from the clicked order"
            assert r["ranking"] == list(range(1, k + 1))
            assert (r["annotator"], r["source"], r["origin"]) == (NAME, "expert", "app")
            shown_ids.append(r["extra"]["shown_order"])  # the display order, as response ids
            shown_texts.append(shown)
            if step < len(PROMPTS) - 1:
                assert prompt, "the next prompt did not appear"
        assert prompt == "" and page.get_by_text(DONE_TEXT).count() == 1
        assert seen_hostile, "the response with <script> and **bold** was never shown"
        _check_xss(page, dialogs)
        assert page.locator('[data-testid="stException"]').count() == 0
        # Rankings count in both of the labeler's counters (all time used to leave them out).
        assert _progress(page) == (len(PROMPTS), len(PROMPTS))

        db = Database(url_db)
        try:
            with db.read() as s:
                ps = training_pairs(s)
        finally:
            db.dispose()
        assert ps.n_rankings == len(PROMPTS) and ps.n_labels == 0
        by_ranking: dict[int, list[Any]] = {}
        for p in ps.pairs:
            by_ranking.setdefault(p.ranking_id, []).append(p)
        assert len(by_ranking) == len(PROMPTS)
        text_id = {t: i for p in ps.pairs for t, i in ((p.chosen, p.chosen_id), (p.rejected, p.rejected_id))}
        for order, pairs in zip(chosen_texts, (by_ranking[i] for i in sorted(by_ranking))):
            k = len(order)
            assert len(pairs) == k * (k - 1) // 2
            want = {(order[i], order[j]) for i in range(k) for j in range(i + 1, k)}
            assert {(p.chosen, p.rejected) for p in pairs} == want
            assert all(not p.tie and p.annotator == NAME and p.source == "expert" for p in pairs)
        for ids, texts in zip(shown_ids, shown_texts):
            assert ids == [text_id[t] for t in texts], "the stored display order is not what was shown"
    except BaseException:
        for i, pg in enumerate(ctx.pages):
            try:
                pg.screenshot(path=str(tmp_path / f"failure-{i}.png"), full_page=True)
            except Exception:  # noqa: BLE001
                pass
        print("streamlit log:", server.log.read_text()[-3000:])
        raise
    finally:
        ctx.close()
        server.stop()
