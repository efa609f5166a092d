"""Researcher pages refuse without the token; labelers see only the Label page; open mode shows everything."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from db.session import Database
from tests.app.conftest import MAIN, PAGES, Seeded

RESEARCH_PAGES = ["train.py", "dashboard.py", "inspect.py", "data.py"]


def _titles(at: AppTest) -> list[str]:
    return [t.value for t in at.title]


@pytest.mark.parametrize("page", RESEARCH_PAGES)
def test_research_page_refuses_without_token(app_env, sqlite_db: Database, seeded: Seeded, monkeypatch, page: str) -> None:
    monkeypatch.setenv("RMSTUDIO_RESEARCHER_TOKEN", "s3cret-token")
    at = AppTest.from_file(str(PAGES / page), default_timeout=30).run()
    assert not at.exception
    assert any("for researchers" in w.value for w in at.warning)
    assert _titles(at) == []  # nothing of the page itself ran
    # A wrong token is refused, the right one unlocks the page.
    at.text_input[0].input("guess")
    at.button[0].click().run()
    assert any("Wrong researcher token" in e.value for e in at.error) and _titles(at) == []
    at.text_input[0].input("s3cret-token")
    at.button[0].click().run()
    assert not any("for researchers" in w.value for w in at.warning)
    assert _titles(at), f"{page} did not render after the right token"


def test_navigation_hides_research_pages_from_labelers(app_env, sqlite_db: Database, seeded: Seeded, monkeypatch) -> None:
    monkeypatch.setenv("RMSTUDIO_RESEARCHER_TOKEN", "s3cret-token")
    at = AppTest.from_file(MAIN, default_timeout=30)
    at.query_params["annotator"] = "alice"
    at.run()
    assert _titles(at) == ["Label"]
    with pytest.raises(ValueError, match="Known pages: .*label.py"):
        at.switch_page("views/data.py")  # not even registered for a labeler
    assert "Data" not in _titles(at)
    # The sidebar sign-in unlocks the researcher pages for this session only.
    at.sidebar.text_input[0].input("s3cret-token")
    at.sidebar.button[0].click().run()
    at.switch_page("views/data.py").run()
    assert "Data" in _titles(at)


def test_open_mode_without_token_shows_every_page(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    for page in RESEARCH_PAGES:
        at = AppTest.from_file(str(PAGES / page), default_timeout=60).run()
        assert not at.exception, (page, at.exception)
        assert not any("for researchers" in w.value for w in at.warning)
        assert _titles(at), page


def test_oidc_configured_requires_login(app_env, sqlite_db: Database, seeded: Seeded) -> None:
    """With an [auth] section in secrets, researcher pages ask for st.login, even without a token."""
    at = AppTest.from_file(str(PAGES / "data.py"), default_timeout=30)
    at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x",
                          "client_id": "id", "client_secret": "s",
                          "server_metadata_url": "https://example.invalid/.well-known/openid-configuration"}
    at.run()
    assert not at.exception
    assert any("for researchers" in w.value for w in at.warning)
    assert [b.label for b in at.button] == ["Log in (researchers)"] and _titles(at) == []
    main = AppTest.from_file(MAIN, default_timeout=30)
    main.secrets["auth"] = at.secrets["auth"]
    main.query_params["annotator"] = "alice"
    main.run()
    assert _titles(main) == ["Label"]
    with pytest.raises(ValueError, match="Known pages"):
        main.switch_page("views/train.py")
    # Once logged in through the provider, the page opens.
    at.user = {"is_logged_in": True, "email": "researcher@example.org"}
    at.run()
    assert not at.exception and _titles(at) == ["Data"]
