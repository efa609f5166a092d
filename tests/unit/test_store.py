from db import store
from db.models import Comparison, Label, Outcome, Side


def test_content_dedup_and_idempotent_labels(any_db):
    with any_db.write() as s:
        p = store.get_or_create_prompt(s, "What is 2+2?", category="math")
        p2 = store.get_or_create_prompt(s, "What is 2+2?")
        assert p.id == p2.id
        ra = store.get_or_create_response(s, p, "4")
        rb = store.get_or_create_response(s, p, "5")
        assert store.get_or_create_response(s, p, "4").id == ra.id
        oc = store.get_or_create_comparison(s, rb, ra)  # caller's order is (b, a)
        assert oc.swapped
        assert oc.outcome_to_stored("b") is Outcome.a  # caller says its second ("4") is better
        _, created = store.add_label(
            s, comparison_id=oc.comparison.id, outcome=oc.outcome_to_stored("b"), source="expert",
            annotator="ann", idempotency_key="k1", left=oc.to_stored("a"),
        )
        _, again = store.add_label(
            s, comparison_id=oc.comparison.id, outcome="a", source="expert", annotator="ann", idempotency_key="k1"
        )
        assert created and not again
    with any_db.read() as s:
        labels = s.query(Label).all()
        assert len(labels) == 1
        assert labels[0].outcome is Outcome.a and labels[0].left is Side.b
        assert s.get(Comparison, oc.comparison.id).label_count == 1


def test_undo_takes_back_only_the_given_key_of_its_own_annotator(any_db):
    with any_db.write() as s:
        p = store.get_or_create_prompt(s, "p")
        c = store.get_or_create_comparison(s, store.get_or_create_response(s, p, "x"), store.get_or_create_response(s, p, "y")).comparison
        for i, who in enumerate(["amy", "amy", "bob"]):
            store.add_label(s, comparison_id=c.id, outcome="a", source="crowd", annotator=who, idempotency_key=f"k{i}")
    with any_db.write() as s:
        assert store.undo_label(s, "amy", "k2") is None  # bob's key under amy's name: nothing
        assert store.undo_label(s, "bob", "k1") is None  # amy's key under bob's name: nothing
        assert store.undo_label(s, "amy", "") is None
        undone = store.undo_label(s, "amy", "k1")
        assert undone is not None and undone.idempotency_key == "k1"
        assert store.undo_label(s, "amy", "k1") is None  # gone already
    with any_db.read() as s:
        assert sorted(l.idempotency_key for l in s.query(Label)) == ["k0", "k2"]
        assert s.get(Comparison, c.id).label_count == 2
