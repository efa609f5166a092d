"""``rmstudio import / export / stats``: in-process through ``main([...])``, plus one real subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cli import main

REPO = Path(__file__).resolve().parents[2]
CMP = [
    {"prompt": "2+2?", "response_a": "4", "response_b": "5", "winner": "a", "annotator": "amy", "category": "math"},
    {"prompt": "2+2?", "response_a": "5", "response_b": "4", "winner": "b", "annotator": "bob", "source": "expert"},
    {"prompt": "Capital of France?", "response_a": "Paris", "response_b": "Lyon", "winner": "tie"},
    {"prompt": "Capital of France?", "response_a": "Lyon", "response_b": "Rome", "winner": "both_bad"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_import_stats_export(home, tmp_path, capsys):
    f = write_jsonl(tmp_path / "c.jsonl", CMP)
    rc, out, _ = run(capsys, "import", str(f), "--annotator", "zed", "--no-progress")
    assert rc == 0 and "4 labels" in out
    rc, out, _ = run(capsys, "import", str(f), "--annotator", "zed", "--json")  # the same import again
    report = json.loads(out)
    assert rc == 0 and report["labels_added"] == 0 and report["duplicates"] == 4 and report["format"] == "comparisons"

    rc, out, _ = run(capsys, "stats", "--json")
    st = json.loads(out)
    assert rc == 0 and st["labels"] == 4 and st["pairs"] == 3 and st["tier"] == "under 1,000"
    assert st["by_source"] == {"expert": 1, "crowd": 3, "ai": 0}
    assert st["by_outcome"]["tie"] == 1 and st["by_outcome"]["both_bad"] == 1
    assert st["by_annotator"] == {"zed": 2, "amy": 1, "bob": 1}
    assert "DPO" in st["advice"] and "quality" in st["advice"]
    rc, out, _ = run(capsys, "stats")
    assert rc == 0 and "under 1,000" in out and "expert 1" in out

    rc, out, err = run(capsys, "export", str(tmp_path / "t.jsonl"), "--format", "trl")
    assert rc == 0 and "1 tie" in out and "1 both_bad" in out
    rows = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert rows == [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}] * 2
    rc, out, err = run(capsys, "export", "--format", "comparisons")  # to stdout, summary on stderr
    assert rc == 0 and len(out.splitlines()) == 4 and "wrote 4" in err
    rc, out, _ = run(capsys, "export", "--format", "parquet", "--out", str(tmp_path / "x.parquet"), "--split", "test")
    assert rc == 0 and "wrote 0" in out and "4 other_split" in out


def test_lfqa_style_mapping_flags(home, tmp_path, capsys):
    rows = [{"question": f"q{i}", "answer_a": "x", "answer_b": "y", "overall_preference": v, "justification": "j"}
            for i, v in enumerate([-1, 1, 0])]
    f = write_jsonl(tmp_path / "lfqa.jsonl", rows)
    rc, out, err = run(capsys, "import", str(f), "--map", "prompt=question,a=answer_a,b=answer_b,winner=overall_preference",
                       "--winner-values=-1:a,1:b,0:tie", "--source", "expert", "--json")
    assert rc == 0, err
    assert json.loads(out)["labels_added"] == 3
    rc, out, _ = run(capsys, "stats", "--json")
    st = json.loads(out)
    assert st["by_source"]["expert"] == 3 and st["ties"] == 1


def test_several_verdict_columns_numeric_scale_and_mixed_on_the_command_line(home, tmp_path, capsys):
    rows = [{"q": f"q{i}", "r1": f"x{i}", "r2": f"y{i}", "annotator1": i % 3, "annotator2": 1, "pref": 1 + i / 4}
            for i in range(5)]
    f = write_jsonl(tmp_path / "multi.jsonl", rows)
    rc, out, err = run(capsys, "import", str(f), "--map", "prompt=q,a=r1,b=r2,winner=annotator1|annotator2",
                       "--winner-values=0:tie,1:a,2:b", "--json")
    assert rc == 0 and json.loads(out)["labels_added"] == 10, err
    rc, out, err = run(capsys, "import", str(f), "--map", "prompt=q,a=r1,b=r2,winner=pref", "--winner-scale", "1:a,2:b",
                       "--annotator", "judge", "--source", "ai", "--json")
    assert rc == 0 and json.loads(out)["labels_added"] == 5, err
    rc, out, _ = run(capsys, "stats", "--json")
    st = json.loads(out)
    assert st["by_annotator"] == {"annotator1": 5, "annotator2": 5, "judge": 5} and st["by_source"]["ai"] == 5
    export_path = tmp_path / "all.jsonl"
    assert run(capsys, "export", str(export_path), "--format", "comparisons")[0] == 0
    rc, out, _ = run(capsys, "import", str(export_path), "--format", "mixed", "--json")
    assert rc == 0 and json.loads(out)["format"] == "mixed" and json.loads(out)["duplicates"] == 15
    rc, _, err = run(capsys, "import", str(f), "--map", "prompt=q,a=r1,b=r2,winner=pref", "--winner-scale", "1:a")
    assert rc == 1 and "--winner-scale" in err and len(err.strip().splitlines()) == 1


def test_errors_are_one_line_and_leave_the_database_alone(home, tmp_path, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", CMP[:1])
    assert run(capsys, "import", str(good), "--no-progress")[0] == 0
    bad = write_jsonl(tmp_path / "bad.jsonl", CMP[1:] + [{"prompt": "p", "response_a": "a", "response_b": "b", "winner": "maybe"}])
    rc, out, err = run(capsys, "import", str(bad))
    assert rc == 1 and err.strip() == "rmstudio import: error: bad.jsonl:4: field 'winner': unknown winner 'maybe': expected a, b, tie or both_bad"
    assert "Traceback" not in err
    rc, out, _ = run(capsys, "stats", "--json")
    assert json.loads(out)["labels"] == 1  # nothing of bad.jsonl was written

    rc, out, err = run(capsys, "import", str(bad), "--dry-run")
    assert rc == 1 and "3 valid records, 1 invalid; nothing written" in out and "bad.jsonl:4: field 'winner'" in err
    rc, out, _ = run(capsys, "import", str(good), "--dry-run", "--json")
    assert rc == 0 and json.loads(out)["records"] == 1 and json.loads(out)["format"] == "comparisons"
    rc, out, _ = run(capsys, "stats", "--json")
    assert json.loads(out)["labels"] == 1  # a dry run writes nothing

    rc, out, err = run(capsys, "import", str(bad), "--skip-invalid", "--no-progress")
    assert rc == 0 and "3 labels" in out and "1 invalid rows skipped" in out and "bad.jsonl:4" in err

    for argv, words in [
        (["import", str(tmp_path / "missing.jsonl")], "no such file"),
        (["import", str(good), "--map", "prompt=q"], "--map"),
        (["import", str(good), "--map", "prompt=prompt,a=response_a,b=response_b,winner=winner", "--winner-values=2:z"], "outcomes"),
        (["export", "--format", "parquet"], "needs an output file"),
    ]:
        rc, _, err = run(capsys, *argv)
        assert rc == 1 and words in err and len(err.strip().splitlines()) == 1, err


def test_real_subprocess_reads_env(home, tmp_path):
    f = write_jsonl(tmp_path / "c.jsonl", CMP)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "cli"]
    p = subprocess.run([*cmd, "import", str(f), "--no-progress"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([*cmd, "stats", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert p.returncode == 0 and json.loads(p.stdout)["labels"] == 4
    assert (home / "rmstudio.db").exists()  # RMSTUDIO_DB from the environment, not ./rmstudio-data
    p = subprocess.run([*cmd, "import", str(tmp_path / "nope.csv")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    err = p.stderr.strip()
    assert p.returncode == 1 and err.startswith("rmstudio import: error: ") and err.endswith("nope.csv:0: field 'file': no such file")
    assert len(err.splitlines()) == 1
