"""``rmstudio queue``: the labeling-queue policy shown and changed from a shell, bad values named, nothing stored
then."""
from __future__ import annotations

import json

import pytest

from cli import main
from db.labeling import QueuePolicy, load_queue_policy
from db.session import Database


def test_queue_policy_from_the_shell(sqlite_db: Database, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["queue", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == QueuePolicy().to_dict()
    assert main(["queue", "--control-share", "0.1", "--labels-per-pair", "2", "--active-learning"]) == 0
    assert "control pairs: 10.0% of each labeler's pairs; active learning: on" in capsys.readouterr().out
    with sqlite_db.read() as s:
        assert load_queue_policy(s) == QueuePolicy(target_overlap=2, control_share=0.1, active_learning=True)
    assert main(["queue", "--control-share", "0.9"]) == 2
    assert "argument --control-share: must be a finite number from 0 to 0.5" in capsys.readouterr().err
    assert main(["queue", "--no-active-learning"]) == 0
    with sqlite_db.read() as s:  # the refused change stored nothing; the others stay
        assert load_queue_policy(s) == QueuePolicy(target_overlap=2, control_share=0.1, active_learning=False)
