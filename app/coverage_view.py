"""The Dashboard's Coverage tab: labels per category, and downstream prompts (an uploaded file, or the prompts the
reward server scored responses to) checked against the labelled ones (does the reward model cover the prompts it
will be used on?)."""
from __future__ import annotations

from typing import Any

import streamlit as st

from app import charts
from app import dashboard_data as data
from app.data_view import too_big
from app.hints import nothing_yet
from app.render import pct
from app.resources import settings
from rm_engine.quality import coverage

SERVED = "prompts the reward server scored"


def _uploaded(cfg: Any) -> list[str] | None:
    """The prompts of an uploaded file (None until one is uploaded, or when it is refused: the error is shown)."""
    up = st.file_uploader("Downstream prompts to check (.txt one per line, .jsonl or .csv with a `prompt` column)",
                          type=["txt", "jsonl", "json", "csv"], max_upload_size=cfg.max_upload_mb,
                          key="coverage_upload")
    if up is None:
        return None
    try:
        if problem := too_big(up.size, cfg.max_upload_mb):  # the browser enforces it too; never trust the client
            raise ValueError(problem)
        return coverage.parse_prompt_upload(up.getvalue(), up.name)
    except ValueError as exc:
        st.error(str(exc))
        return None


def coverage_panel(url: str, fp: data.Fingerprint) -> None:
    """Labels per category; uploaded downstream prompts checked against the labelled ones."""
    base = data.coverage_base(url, fp)
    if len(base["labelled"]):
        st.plotly_chart(charts.labels_per_category(base["per_category"]), key="categories")
    else:
        nothing_yet("No labelled prompt yet: labels per category show here once pairs are labelled (or labelled data "
                    "is imported on the Data page); until then no downstream prompt is covered.", "label.py",
                    "Label pairs")
    cfg = settings()
    seen = data.served_summary()
    sources = ["an uploaded file"] + ([SERVED] if seen["prompts"] else [])
    source = st.radio("Prompts to check", sources, horizontal=True, key="coverage_source", persist_state="session",
                      help="the reward server (`rmstudio reward-server`) counts the prompts it scores responses "
                           "to: what the RL policy is really asked")
    method = st.radio("Similarity", ["auto", "tfidf", "embedding"], horizontal=True, key="coverage_method",
                      persist_state="session",
                      help="auto: cached backbone embeddings when they exist, else TF-IDF cosine")
    labelled = list(base["labelled"]["text"])
    if source == SERVED:
        prompts = data.served_prompts(url, (seen["prompts"], seen["responses"]))
        st.caption(f"{seen['prompts']:,} distinct prompts, {seen['responses']:,} responses scored, the last at "
                   f"{seen['last_seen'][:19]}" + (f"; the newest {len(prompts):,} checked" if len(prompts) <
                                                  seen["prompts"] else ""))
    elif (prompts := _uploaded(cfg)) is None:
        return
    bar = st.progress(0.0, text="Comparing with the labelled prompts...")
    res, note = coverage.check_coverage(prompts, labelled, method=method, settings=cfg,
                                        progress=lambda f, msg: bar.progress(f, text=msg))
    bar.empty()
    st.metric("Covered", pct(res.share_covered), help=note)
    st.caption(f"Method: {note}; covered means similarity >= {res.threshold}.")
    st.plotly_chart(charts.coverage_histogram(res.similarity, res.threshold), key="coverage")
    st.dataframe(coverage.result_frame(res, labelled), hide_index=True)
