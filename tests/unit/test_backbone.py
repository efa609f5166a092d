"""Backbone resolution (confined paths), tokenizers and the truncation policy."""
from __future__ import annotations

from pathlib import Path

import pytest

from db.config import Settings
from rm_engine.backbone import (
    TRUNCATION_POLICY,
    BackboneError,
    build_inputs,
    build_text_inputs,
    is_decoder,
    load_config,
    load_tokenizer,
    minilm_dir,
    resolve_backbone,
)
from tests.tiny_models import TINY_CHAT_TEMPLATE, build_tiny_decoder, build_tiny_encoder


def settings_for(home: Path, *dirs: Path) -> Settings:
    return Settings(home=home, db_url="sqlite://", model_dirs=tuple(dirs))


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-backbones")
    return {
        "enc": build_tiny_encoder(root / "enc"),
        "dec": build_tiny_decoder(root / "dec"),
        "dec_plain": build_tiny_decoder(root / "dec_plain", chat_template=False),
        "root": root,
    }


def test_minilm_resolves_to_the_package(tmp_path: Path) -> None:
    ref = resolve_backbone("minilm", settings_for(tmp_path))
    assert ref.path == minilm_dir() and (ref.path / "config.json").is_file()
    assert ref.name == "minilm" and len(ref.fingerprint) == 32
    assert resolve_backbone("MiniLM", settings_for(tmp_path)).fingerprint == ref.fingerprint


def test_paths_are_confined(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with pytest.raises(BackboneError, match=str(tiny_dirs["enc"])) as exc:
        resolve_backbone(str(tiny_dirs["enc"]), settings_for(home))
    assert "outside the allowed model folders" in str(exc.value)
    # allowed through RMSTUDIO_MODEL_DIRS
    ref = resolve_backbone(str(tiny_dirs["enc"]), settings_for(home, tiny_dirs["root"]))
    assert ref.path == tiny_dirs["enc"].resolve()
    # a symlink inside home that points outside is refused (the real path counts)
    (home / "sneaky").symlink_to(tiny_dirs["enc"])
    with pytest.raises(BackboneError, match="outside"):
        resolve_backbone(str(home / "sneaky"), settings_for(home))
    with pytest.raises(BackboneError, match="outside"):
        resolve_backbone(str(home / ".." / ".." / "etc"), settings_for(home))
    with pytest.raises(BackboneError, match="URL"):
        resolve_backbone("https://huggingface.co/gpt2", settings_for(home))


def test_not_a_model_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="no config.json"):
        resolve_backbone(str(tmp_path / "empty"), settings_for(tmp_path))
    with pytest.raises(BackboneError, match="not a directory"):
        resolve_backbone(str(tmp_path / "missing"), settings_for(tmp_path))


def test_fingerprint_changes_with_weights(tmp_path: Path) -> None:
    a = build_tiny_encoder(tmp_path / "a", seed=0)
    b = build_tiny_encoder(tmp_path / "b", seed=1)
    s = settings_for(tmp_path)
    assert resolve_backbone(str(a), s).fingerprint != resolve_backbone(str(b), s).fingerprint


def test_is_decoder(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    s = settings_for(tmp_path, tiny_dirs["root"])
    assert not is_decoder(load_config(resolve_backbone(str(tiny_dirs["enc"]), s)))
    assert is_decoder(load_config(resolve_backbone(str(tiny_dirs["dec"]), s)))


def test_encoder_truncation_keeps_response_and_cuts_prompt_left(tmp_path: Path) -> None:
    tok = load_tokenizer(resolve_backbone("minilm", settings_for(tmp_path)))
    prompt = " ".join(f"w{i}" for i in range(300)) + " final question"
    ids = build_inputs(tok, prompt, None, "the complete response", 32, decoder=False)
    toks = tok.convert_ids_to_tokens(ids)
    assert len(ids) == 32
    assert toks[0] == "[CLS]" and toks[-1] == "[SEP]"
    text = tok.decode(ids, skip_special_tokens=True)
    assert text.endswith("final question the complete response")  # the prompt's end survives, the start is cut
    assert "w0 " not in text
    short = build_inputs(tok, "hi", [("user", "earlier"), ("assistant", "reply")], "ok", 64, decoder=False)
    assert "earlier" in tok.decode(short) and len(short) < 64
    # a response longer than the budget is cut at its end; the prompt keeps its last max_length // 8 tokens
    long_resp = " ".join(["word"] * 200)
    ids = build_inputs(tok, "prompt goes here", None, long_resp, 64, decoder=False)
    assert len(ids) == 64 and "here" in tok.decode(ids)
    assert TRUNCATION_POLICY.startswith("keep-response")


def test_text_inputs_cut_side(tmp_path: Path) -> None:
    tok = load_tokenizer(resolve_backbone("minilm", settings_for(tmp_path)))
    left = tok.decode(build_text_inputs(tok, "a b c d e f g h", 6, cut="left"), skip_special_tokens=True)
    right = tok.decode(build_text_inputs(tok, "a b c d e f g h", 6, cut="right"), skip_special_tokens=True)
    assert left == "e f g h" and right == "a b c d"


def test_decoder_chat_template_and_pad(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    s = settings_for(tmp_path, tiny_dirs["root"])
    tok = load_tokenizer(resolve_backbone(str(tiny_dirs["dec"]), s))
    assert tok.chat_template == TINY_CHAT_TEMPLATE
    assert tok.pad_token is not None and tok.padding_side == "right"  # pad == eos handled
    ids = build_inputs(tok, "what is up", [("user", "hello"), ("assistant", "hi")], "all good", 64, decoder=True)
    text = tok.decode(ids)
    assert "< | assistant | > all good" in text and "hello" in text
    long = build_inputs(tok, "x " * 400, None, "all good", 40, decoder=True)
    assert len(long) <= 40 and tok.decode(long).endswith("all good")


def test_decoder_without_template_ends_with_eos(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    s = settings_for(tmp_path, tiny_dirs["root"])
    tok = load_tokenizer(resolve_backbone(str(tiny_dirs["dec_plain"]), s))
    ids = build_inputs(tok, "question", None, "answer", 32, decoder=True)
    assert ids[-1] == tok.eos_token_id
    assert "assistant : answer" in tok.decode(ids)
