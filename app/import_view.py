"""The Data page's Import tab: upload, format, a proposed field mapping to confirm, a preview that shows each
row's verdict, errors by line, the import with a progress bar. Streamlit glue only: the work is
``db.importer`` (preview, import) and ``db.import_proposal`` (the proposed mapping, the preview's rows).
Messages name the page's own fields ("Field mapping", "Skip invalid rows"), never command-line flags."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from app.data_view import too_big
from app.render import escape_md
from app.resources import database
from db.formats import FORMATS, FormatError, RowError
from db.formats.mapped import TARGETS
from db.import_proposal import Proposal, preview_rows, profile_columns, propose_mapping
from db.importer import Preview, import_file, preview
from db.models import Source

AUTO = "auto-detect"
NONE = "(not in file)"
FORMAT_LABELS = {
    AUTO: "auto-detect", "mapped": "mapped (columns chosen below)",
    "mixed": "mixed (comparison, ranking and unlabeled lines, as exported)",
}
MAIN_TARGETS = {"prompt": "Prompt", "a": "Response A", "b": "Response B"}
OTHER_TARGETS = [t for t in TARGETS if t not in (*MAIN_TARGETS, "winner")]
VERDICT_KINDS = ("as written (a, b, tie, both_bad)", "values to map", "a number scale")


@dataclass(frozen=True)
class UploadOptions:
    """What the researcher chose for an upload (arguments of ``preview``/``import_file``)."""

    format: str | None = None
    mapping: tuple[tuple[str, str], ...] | None = None
    winner_values: str | None = None
    source: str | None = None
    annotator: str | None = None
    category: str | None = None
    split: str = "train"
    skip_invalid: bool = False
    winner_scale: str | None = None

    def kwargs(self) -> dict[str, Any]:
        return dict(format=self.format, mapping=dict(self.mapping) if self.mapping else None,
                    winner_values=self.winner_values or None, winner_scale=self.winner_scale or None,
                    source=self.source, annotator=self.annotator, category=self.category, split=self.split)


def errors_table(errors: list[RowError]) -> pd.DataFrame:
    """Validation errors as a table: line, field, problem, in the page's words (shown as text by st.dataframe)."""
    rows = []
    for e in errors:
        field, message = e.describe(ui=True)
        rows.append({"line": e.line, "field": field, "problem": message})
    return pd.DataFrame(rows)


def cached_preview(data: bytes, file_id: str, name: str, opts: UploadOptions) -> Preview:
    """Preview once per file and options (reruns of the page do not re-read the file)."""
    key = ("data_preview", file_id, opts)
    hit = st.session_state.get("data_preview")
    if hit is not None and hit[0] == key:
        return hit[1]
    pv = preview(data, filename=name, **opts.kwargs())
    st.session_state["data_preview"] = (key, pv)
    return pv


def cached_proposal(data: bytes, file_id: str, name: str) -> tuple[list[str], Proposal]:
    """The file's columns (from its first rows) and the mapping they suggest, once per file."""
    hit = st.session_state.get("data_proposal")
    if hit is None or hit[0] != file_id:
        profiles = profile_columns(data, filename=name)
        hit = (file_id, [c.name for c in profiles], propose_mapping(profiles))
        st.session_state["data_proposal"] = hit
    return hit[1], hit[2]


def _proposed_defaults(file_id: str, columns: list[str], proposal: Proposal) -> None:
    """Fill the mapping widgets with the proposal: for each new file, and for widgets not shown on the last run."""
    defaults: dict[str, Any] = {f"map_{t}": proposal.mapping.get(t, NONE) for t in TARGETS if t != "winner"}
    defaults["map_winner"] = [c for c in proposal.mapping.get("winner", "").split("|") if c in columns]
    defaults["map_kind"] = VERDICT_KINDS[2 if proposal.winner_scale else 1 if proposal.winner_values else 0]
    defaults["map_values"] = proposal.winner_values or ""
    defaults["map_scale"] = proposal.winner_scale or ""
    fresh = st.session_state.get("map_file") != file_id
    st.session_state["map_file"] = file_id
    for key, value in defaults.items():
        if fresh or key not in st.session_state:
            st.session_state[key] = value


def mapping_form(file_id: str, columns: list[str], proposal: Proposal) -> tuple[tuple[tuple[str, str], ...], str | None, str | None]:
    """The field mapping, pre-filled with the proposal: ``(mapping pairs, verdict values, verdict scale)``."""
    _proposed_defaults(file_id, columns, proposal)
    st.markdown("**Field mapping**: which column holds each field")
    if proposal.notes:
        st.caption("Proposed from the column names and values; check it against the preview's verdicts: "
                   + escape_md("; ".join(proposal.notes)) + ".")
    options = [NONE, *columns]
    cols = st.columns(4)
    chosen = [(t, cols[i].selectbox(label, options, key=f"map_{t}")) for i, (t, label) in enumerate(MAIN_TARGETS.items())]
    winners = cols[3].multiselect("Verdict column(s)", columns, key="map_winner",
                                  help="the column saying which response is better; several columns: one annotator "
                                       "each, named like the column")
    with st.expander("Other fields: chosen / rejected pairs, source, annotator, category, strength, models, history"):
        more = st.columns(4)
        chosen += [(t, more[i % 4].selectbox(t, options, key=f"map_{t}")) for i, t in enumerate(OTHER_TARGETS)]
    mapping = [(t, c) for t, c in chosen if c != NONE]
    if winners:
        mapping.append(("winner", "|".join(winners)))
    kind = st.radio("The verdict column holds", VERDICT_KINDS, key="map_kind", horizontal=True)
    values = scale = None
    if kind == VERDICT_KINDS[1]:
        values = st.text_input("Verdict values", key="map_values", placeholder="-1:a,1:b,0:tie",
                               help="each value of the verdict column and what it means: a, b, tie or both_bad") or None
    elif kind == VERDICT_KINDS[2]:
        scale = st.text_input("Verdict scale", key="map_scale", placeholder="1:a,2:b",
                              help="the number meaning 'A better' and the one meaning 'B better': values nearer one "
                                   "end choose it, the midpoint is a tie, the distance from it the strength") or None
    return tuple(mapping), values, scale


def options_form(file_id: str, auto: Preview, columns: list[str], proposal: Proposal) -> UploadOptions:
    """Format, defaults for rows that lack them, and the field mapping when the format is mapped or unknown."""
    c = st.columns(4)
    fmt = c[0].selectbox("Format", [AUTO, *FORMATS], key="data_format", format_func=lambda f: FORMAT_LABELS.get(f, f),
                         help="auto-detect reads the fields of the first rows; one file is one format")
    source = c[1].selectbox("Default source", [NONE, *[s.value for s in Source]], key="data_source",
                            help="for rows without a source field")
    split = c[2].selectbox("Split", ["train", "test"], key="data_split", help="test labels are never trained on")
    skip = c[3].checkbox("Skip invalid rows", key="data_skip", help="import the valid rows and list the others")
    c2 = st.columns(2)
    annotator = c2[0].text_input("Default annotator", max_chars=200, key="data_annotator")
    category = c2[1].text_input("Default category", max_chars=100, key="data_category")
    unknown = fmt == AUTO and auto.format is None and bool(auto.errors) and auto.errors[0].field == "format"
    mapping = values = scale = None
    if fmt == "mapped" or (unknown and proposal.mapping):
        if unknown:
            st.info("RM Studio does not know this file's layout: below is a field mapping proposed from its columns. "
                    "Check it, and the verdict of each row in the preview, then import.")
        mapping, values, scale = mapping_form(file_id, columns, proposal)
        fmt = "mapped"
    return UploadOptions(None if fmt == AUTO else fmt, mapping, values, None if source == NONE else source,
                         annotator.strip() or None, category.strip() or None, split, skip, scale)


def run_import(data: bytes, name: str, opts: UploadOptions) -> None:
    """Import with a progress bar; shows the report or the error (line, field, problem)."""
    bar = st.progress(0.0, text="Validating...")

    def progress(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(1, total)), text=f"Writing {done:,} / {total:,} records")

    try:
        report = import_file(database(), data, filename=name, skip_invalid=opts.skip_invalid, progress=progress,
                             **opts.kwargs())
    except FormatError as exc:
        bar.empty()
        field, message = exc.row_error.describe(ui=True)
        where = f"line {exc.line}, field '{field}'" if exc.line else f"'{field}'"
        st.error(f"Nothing was imported: {escape_md(f'{where}: {message}')}")
        return
    bar.progress(1.0, text="Done")
    st.success(escape_md(report.summary()))
    if report.skipped:
        st.warning(f"{len(report.skipped)} invalid rows were skipped:")
        st.dataframe(errors_table(report.skipped), hide_index=True)


def import_tab(max_upload_mb: int) -> None:
    """The whole Import tab."""
    upload = st.file_uploader("Preference file (JSON lines, JSON, CSV/TSV or Parquet; gzip allowed)",
                              type=["jsonl", "json", "csv", "tsv", "parquet", "gz"], max_upload_size=max_upload_mb,
                              key="data_upload")
    if upload is None:
        st.caption("Formats: `hh-rlhf` (chosen/rejected transcripts), `trl` (prompt/chosen/rejected), `comparisons`, "
                   "`rankings`, `unlabeled` (prompts and responses to label here), `mixed` (an export), or any "
                   "other columns, mapped after the upload.")
        return
    if problem := too_big(upload.size, max_upload_mb):
        st.error(problem)
        return
    data, name = upload.getvalue(), upload.name
    st.markdown(f"File: {escape_md(name)} ({upload.size / 1024:.1f} KB)")  # not in backticks: escapes show there
    auto = cached_preview(data, upload.file_id, name, UploadOptions())
    columns, proposal = cached_proposal(data, upload.file_id, name)
    opts = options_form(upload.file_id, auto, columns or auto.columns, proposal)
    pv = cached_preview(data, upload.file_id, name, opts)
    m = st.columns(4)
    m[0].metric("Detected format", pv.format or "unknown")
    m[1].metric("Container", pv.container or "-")
    m[2].metric("Valid records", f"{pv.n_records:,}")
    m[3].metric("Invalid rows", f"{pv.n_errors:,}")
    if pv.rows:
        st.markdown("**Preview** (first rows as they will be stored, with their verdicts)")
        st.dataframe(pd.DataFrame(preview_rows(pv.rows)), hide_index=True)
    if pv.errors:
        st.markdown(f"**Validation errors** (first {len(pv.errors)} of {pv.n_errors})")
        st.dataframe(errors_table(pv.errors), hide_index=True)
    blocked = pv.format is None or (pv.n_errors > 0 and not opts.skip_invalid) or pv.n_records == 0
    if blocked and pv.n_errors and pv.format is not None:
        st.info("Fix the rows listed above, or tick **Skip invalid rows** to import the valid ones.")
    if st.button("Import", type="primary", disabled=blocked, key="data_import"):
        run_import(data, name, opts)
