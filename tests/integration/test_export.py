"""``rmstudio models export``: a version as a Hugging Face folder. Loaded with transformers alone, through the model
card's own snippets (token ids as RM Studio builds them; a ``pipeline`` on one chat-templated string), it gives RM
Studio's scores on inputs shorter and longer than the version's max length (encoder text pairs with [CLS], mean and
rich pooling, a decoder's chat template, a decoder's plain dialogue; pad == eos decoders; LoRA merged; head mode);
what cannot be one model is refused and nothing is written. Real data, TRL and pipelines: test_export_real.py."""
from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import pytest

from cli import main
from db.config import Settings
from db.session import Database
from db.versions import responses_for_scoring
from rm_engine.backbone import build_inputs
from rm_engine.config import TrainConfig
from rm_engine.serving.scoring import RewardModel
from rm_engine.training import train_and_publish
from rm_engine.versions import export as export_mod
from rm_engine.versions.export import CARD_FILE, INFO_FILE, ExportError, export_archive, export_refusal, export_version
from rm_engine.versions.export_modeling import model_inputs
from tests.integration.rm_seed import one_thread, seed_labels  # noqa: F401
from tests.tiny_models import TINY_CHAT_TEMPLATE, build_tiny_decoder, build_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export-backbones")
    build_tiny_encoder(root / "enc")
    from transformers import AutoTokenizer

    build_tiny_encoder(root / "enc-chat")  # an encoder whose tokenizer has a chat template
    tok = AutoTokenizer.from_pretrained(str(root / "enc-chat"))
    tok.chat_template = TINY_CHAT_TEMPLATE
    tok.save_pretrained(str(root / "enc-chat"))
    build_tiny_decoder(root / "dec-chat", pad_equals_eos=True, chat_template=True)
    build_tiny_decoder(root / "dec-plain", pad_equals_eos=True, chat_template=False)
    return root


@pytest.fixture
def settings(home: Path, backbones: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("RMSTUDIO_MODEL_DIRS", str(backbones))
    return Settings.from_env()


def _train(db: Database, settings: Settings, backbone: Path, **kw):
    base = dict(mode="finetune", backbone=str(backbone), epochs=1, lr=1e-3, batch_tokens=2048, max_length=64,
                device="cpu", weight_decay=0.0)
    return train_and_publish(db, settings, TrainConfig(**(base | kw)))


def card_snippet(out: Path, block: int = 1) -> dict:
    """Run the README's Python block ``block`` (0: the pipeline, 1: the token ids) pointed at ``out``; its
    namespace."""
    card = (out / CARD_FILE).read_text(encoding="utf-8")
    code = re.findall(r"```python\n(.*?)```", card, re.S)[block]
    assert "'.'" in code  # "this folder"
    ns: dict = {}
    exec(compile(code.replace("'.'", repr(str(out))), str(out / CARD_FILE), "exec"), ns)  # noqa: S102 - ours
    return ns


def check_pipeline_block(out: Path, model: RewardModel) -> None:
    """The card's pipeline block prints RM Studio's raw score and z of its example conversation."""
    ns = card_snippet(out, 0)
    (user, assistant) = ns["messages"]
    want = model.score(user["content"], [assistant["content"]])[0]
    assert ns["raw"] == pytest.approx(want.raw, abs=1e-4)
    assert (ns["raw"] - ns["MEAN"]) / ns["STD"] == pytest.approx(want.z, abs=1e-3)


LONG = " ".join(f"word{i}" for i in range(120))  # past max_length 64: the model truncates as training did


@pytest.mark.parametrize("kind,lora,pooling,fmt", [
    ("enc", False, "cls", "text-pair"),
    ("enc", True, "mean", "text-pair"),
    ("enc", False, "rich", "text-pair"),  # three sequences per score: context + response, response, context
    ("dec-chat", True, None, "chat-template"),
    ("dec-plain", False, None, "plain-dialogue"),
])
def test_exported_folder_scores_like_rm_studio(kind: str, lora: bool, pooling: str | None, fmt: str,
                                               sqlite_db: Database, settings: Settings, backbones: Path,
                                               tmp_path: Path) -> None:
    seed_labels(sqlite_db, 12)
    v = _train(sqlite_db, settings, backbones / kind, lora=lora, **({"pooling": pooling} if pooling else {}))
    out = tmp_path / "dest" / "exported"
    info = export_version(sqlite_db, settings, v.id, out)

    assert [p.name for p in out.parent.iterdir()] == ["exported"]  # no temporary sibling left
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin")) and not list(out.glob("adapter_*"))
    on_disk = json.loads((out / INFO_FILE).read_text())
    assert on_disk == info and info["version_id"] == v.id and info["input"]["format"] == fmt
    assert info["input"]["one_string_exact"] is True
    assert info["normalization"]["std"] == pytest.approx(v.norm_stats["std"])
    assert "LoRA" in info["recipe"] if lora else "full fine-tune" in info["recipe"]
    assert info["temperature"] == v.metrics["temperature"]["temperature"]  # None: too few validation pairs here
    assert info["length_bias"] == v.metrics["val"]["length_bias"]["message"]
    assert f"Length bias on the validation pairs: {info['length_bias']}" in (out / CARD_FILE).read_text()
    assert info["pooling"] == (pooling or ("last" if kind.startswith("dec") else "cls"))
    assert info["remote_code"] == "modeling_rmstudio.py"

    ns = card_snippet(out)  # transformers alone: no RM Studio class in the loop
    assert type(ns["model"]).__name__ == "RMStudioRewardModel"
    from transformers import AutoModelForSequenceClassification

    with pytest.raises(ValueError, match="trust_remote_code"):  # never silently the plain class
        AutoModelForSequenceClassification.from_pretrained(str(out), trust_remote_code=False)
    spec = ns["model"].config.rmstudio
    model = RewardModel.load(sqlite_db, settings, v.id)
    check_pipeline_block(out, model)
    with sqlite_db.read() as s:
        rows = responses_for_scoring(s)[:6]
    history = [("user", "hello"), ("assistant", "hi there")]
    raw_seen = []
    for _, prompt, _, text in rows + [(0, LONG, 0, "short answer"), (0, "short question", 0, LONG), (0, LONG, 0, LONG)]:
        for hist in ((), history):
            ids = ns["input_ids"](prompt, text, hist)  # untruncated; the model cuts as training did
            assert model_inputs(ids, spec)[0] == build_inputs(model_tok(out), prompt, hist, text, 64,
                                                              decoder=kind.startswith("dec"))
            raw, z = ns["reward"](prompt, text, hist)
            want = model.score(prompt, [text], history=list(hist))[0]
            assert raw == pytest.approx(want.raw, abs=1e-4) and z == pytest.approx(want.z, abs=1e-3)
            raw_seen.append(raw)
    assert len({round(r, 5) for r in raw_seen}) > 1  # not one constant score


@pytest.mark.parametrize("kind,features,head,ensemble,member", [
    ("enc", "rich", "linear", 3, None),  # the ensemble's centred mean; context and response split from the pair
    ("enc", "pair", "mlp", 1, None),
    ("dec-chat", "pair", "linear", 2, 1),  # one member of an ensemble
    ("dec-plain", "pair", "mlp", 1, None),
])
def test_exported_head_version_scores_like_rm_studio(kind: str, features: str, head: str, ensemble: int,
                                                     member: int | None, sqlite_db: Database, settings: Settings,
                                                     backbones: Path, tmp_path: Path) -> None:
    seed_labels(sqlite_db, 12)
    v = _train(sqlite_db, settings, backbones / kind, mode="head", head=head, features=features, ensemble=ensemble,
               epochs=30, lr=1e-2)
    out = tmp_path / "exported"
    info = export_version(sqlite_db, settings, v.id, out, member=member)
    assert info["mode"] == "head" and info["remote_code"] == "modeling_rmstudio.py"
    assert info["head"] == {"kind": head, "features": features, "members": ensemble, "quantized_features": False}
    assert info["member"] == member and (info["normalization"] is None) is (member is not None)
    card = (out / CARD_FILE).read_text()
    assert "Head mode" in card and ("(rich features)" in card) is (features == "rich")

    ns = card_snippet(out)  # transformers alone
    assert type(ns["model"]).__name__ == "RMStudioRewardModel"
    model = RewardModel.load(sqlite_db, settings, v.id)
    if member is None:
        check_pipeline_block(out, model)
    with sqlite_db.read() as s:
        rows = responses_for_scoring(s)[:5]
    raw_seen = []
    for _, prompt, _, text in rows + [(0, "short question", 0, LONG), (0, LONG, 0, "short answer")]:
        for hist in ((), [("user", "hello"), ("assistant", "hi there")]):
            raw, z = ns["reward"](prompt, text, hist)
            if member is None:
                want = model.score(prompt, [text], history=list(hist))[0]
                assert raw == pytest.approx(want.raw, abs=1e-4) and z == pytest.approx(want.z, abs=1e-3)
            else:
                want = float(model.score_matrix([(prompt, list(hist), text)])[0, member])
                assert raw == pytest.approx(want, abs=1e-4)
            raw_seen.append(raw)
    assert len({round(r, 5) for r in raw_seen}) > 1

    # a batch with padding scores each row as alone
    tok = ns["tok"]
    ids = [ns["input_ids"](p, t) for _, p, _, t in rows]
    width = max(map(len, ids))
    import torch

    batch = torch.tensor([x + [tok.pad_token_id or 0] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    with torch.no_grad():
        got = ns["model"](input_ids=batch, attention_mask=mask).logits[:, 0].tolist()
    assert got == pytest.approx([ns["reward"](p, t)[0] for _, p, _, t in rows], abs=1e-4)
    if features == "rich":
        with pytest.raises(ValueError, match="row 0: no separator between context and response"):
            ns["model"](input_ids=torch.tensor([tok("only one text")["input_ids"]]))


def model_tok(out: Path):
    """The exported tokenizer as RM Studio would load it for building inputs (without its chat template, which
    RM Studio's own encoder inputs do not use)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out), trust_remote_code=True)
    if json.loads((out / INFO_FILE).read_text())["input"]["format"] != "chat-template":
        tok.chat_template = None
    return tok


def test_ensemble_member_and_rich_features_without_a_separator_are_refused_or_chosen(sqlite_db: Database, settings: Settings,
                                                                                backbones: Path, tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    seed_labels(sqlite_db, 12)
    head = _train(sqlite_db, settings, backbones / "dec-plain", mode="head", epochs=20, lr=1e-2)  # rich features
    ens = _train(sqlite_db, settings, backbones / "enc", ensemble=2)
    templated = _train(sqlite_db, settings, backbones / "enc-chat", mode="head", epochs=20, lr=1e-2)
    for version, match in ((head.id, "rich features .* from a decoder backbone"),
                           (templated.id, "rich features .* through a chat-template input, which has no separator"),
                           (ens.id, "ensemble of 2 models: export one with --member 0..1")):
        with pytest.raises(ExportError, match=match):
            export_version(sqlite_db, settings, version, tmp_path / f"v{version}")
        assert not (tmp_path / f"v{version}").exists()
    with pytest.raises(ExportError, match="no member 2"):
        export_version(sqlite_db, settings, ens.id, tmp_path / "m2", member=2)

    # what the app asks before offering a download (on every rerun of the Train page): the same reasons, from
    # metadata alone, without hashing the weights
    with monkeypatch.context() as mp:
        mp.setattr("rm_engine.versions.registry._sha256", lambda p: pytest.fail(f"hashed {p}"))
        assert "--features pair to export" in export_refusal(sqlite_db, settings, head.id)
        assert export_refusal(sqlite_db, settings, ens.id) is None  # its first member
        assert "no member 2" in export_refusal(sqlite_db, settings, ens.id, 2)
    weights = (backbones / "enc" / "model.safetensors").stat().st_size  # a full fine-tune's member: about as big
    assert export_refusal(sqlite_db, settings, ens.id, 1, max_bytes=2 * weights) is None
    too_big = export_refusal(sqlite_db, settings, ens.id, 1, max_bytes=weights // 2)
    assert "GiB of weights" in too_big and f"rmstudio models export {ens.id} OUT" in too_big
    with monkeypatch.context() as mp, pytest.raises(ExportError, match="more than a download built in the server"):
        mp.setattr(export_mod, "ARCHIVE_MAX_BYTES", weights // 2)
        export_archive(sqlite_db, settings, ens.id, member=1)

    # the app's download: the export as one .zip, everything under rmstudio-v<id>-member1/
    blob = export_archive(sqlite_db, settings, ens.id, member=1)
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        names = zf.namelist()
        assert {n.split("/")[0] for n in names} == {f"rmstudio-v{ens.id}-member1"}
        assert {f"rmstudio-v{ens.id}-member1/{f}" for f in ("config.json", "model.safetensors", INFO_FILE,
                                                            CARD_FILE)} <= set(names)
        zf.extractall(tmp_path / "unzipped")
    folder = tmp_path / "unzipped" / f"rmstudio-v{ens.id}-member1"
    info = json.loads((folder / INFO_FILE).read_text())
    assert info["member"] == 1 and info["members"] == 2 and info["normalization"] is None
    assert "member 1 of an ensemble of 2" in (folder / CARD_FILE).read_text()
    ns = card_snippet(folder)
    model = RewardModel.load(sqlite_db, settings, ens.id)
    prompt, text = "question 3: how do I go about it?", "a clear answer"
    raw, z = ns["reward"](prompt, text)
    assert raw == pytest.approx(float(model.score_matrix([(prompt, None, text)])[0, 1]), abs=1e-4)
    assert z == pytest.approx(raw)  # no statistics for one member: mean 0, std 1


def test_cli_export_and_a_used_destination(sqlite_db: Database, settings: Settings, backbones: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    seed_labels(sqlite_db, 12)
    v = _train(sqlite_db, settings, backbones / "dec-plain")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    rc = main(["models", "export", str(v.id), str(busy)])
    err = capsys.readouterr().err
    assert rc != 0 and "already exists and is not an empty folder" in err
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]

    from db.models import ModelVersion

    with sqlite_db.write() as s:  # as if enough validation pairs had fitted a temperature
        row = s.get(ModelVersion, v.id)
        row.metrics = {**row.metrics, "temperature": {**row.metrics["temperature"], "temperature": 2.0}}
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is a fine destination
    rc = main(["models", "export", "latest", str(empty), "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["exported"] == v.id and res["input"]["format"] == "plain-dialogue"
    assert res["temperature"] == 2.0 and "sigmoid((score_a - score_b) / 2)" in (empty / CARD_FILE).read_text()
    assert (empty / "config.json").is_file() and (empty / CARD_FILE).is_file()
    rc = main(["models", "export", str(v.id)])
    assert rc != 0 and "needs a version id (or 'latest') and an output folder" in capsys.readouterr().err

    # the success line's load snippets work as printed
    rc = main(["models", "export", str(v.id), str(tmp_path / "printed")])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert rc == 0 and line.startswith(f"exported model version {v.id} to ")
    from transformers import AutoModelForSequenceClassification, pipeline

    loads = re.findall(r"(AutoModelForSequenceClassification\.from_pretrained\(.*?\)|pipeline\(.*?\))", line)
    assert len(loads) == 2 and all("trust_remote_code=True" in x for x in loads)
    model = eval(loads[0], {"AutoModelForSequenceClassification": AutoModelForSequenceClassification})
    rm = eval(loads[1], {"pipeline": pipeline})
    assert type(model).__name__ == type(rm.model).__name__ == "RMStudioRewardModel"
    text = rm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}], tokenize=False)
    want = RewardModel.load(sqlite_db, settings, v.id).score("hi", ["hello"])[0].raw
    assert rm(text)[0]["score"] == pytest.approx(want, abs=1e-4)
