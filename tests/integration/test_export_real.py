"""Exported versions used as other code uses reward models, on real HH-RLHF pairs mostly longer than the versions'
max length: loaded by transformers they score exactly as ``rmstudio score`` does, given the token ids the model card
builds, one chat-templated string tokenized as TRL does, or the same strings through ``pipeline("text-
classification")``; and TRL's own ``GRPOTrainer(reward_funcs=<exported folder>)`` trains a step of a tiny random
policy with rewards equal to RM Studio's reward function on the same completions."""
from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from cli import main
from db.config import Settings
from db.formats.hh_rlhf import split_transcripts
from db.importer import import_file
from db.session import Database
from rm_engine.config import TrainConfig
from rm_engine.serving.scoring import RewardModel, reward_function
from rm_engine.training import train_and_publish
from rm_engine.versions.export import export_version
from tests.integration.rm_seed import one_thread  # noqa: F401
from tests.integration.test_export import card_snippet
from tests.tiny_models import build_tiny_decoder, build_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_LENGTH = 48  # tokens: most HH dialogues are longer
TRAIN_LINES = 120  # the first lines of the HH file train; the next HELD_OUT are scored
HELD_OUT = 48


@pytest.fixture(scope="module")
def backbones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("export-real-backbones")
    build_tiny_encoder(root / "enc")
    build_tiny_decoder(root / "dec-chat", pad_equals_eos=True, chat_template=True)
    # the GRPO policy: a tiny random Llama with a chat template; its (BERT) tokenizer gives no token types
    build_tiny_decoder(root / "policy", pad_equals_eos=False, chat_template=True, seed=1)
    AutoTokenizer.from_pretrained(str(root / "policy"), model_input_names=["input_ids", "attention_mask"]
                                  ).save_pretrained(str(root / "policy"))
    return root


@pytest.fixture
def settings(home: Path, backbones: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("RMSTUDIO_MODEL_DIRS", str(backbones))
    return Settings.from_env()


def _hh_lines(shared_data: Path, start: int, stop: int) -> list[dict]:
    with gzip.open(shared_data / "hh_harmless_1300.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for n, line in enumerate(f) if start <= n < stop]


def _train_on_hh(db: Database, settings: Settings, shared_data: Path, tmp_path: Path, **cfg):
    path = tmp_path / "hh-train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _hh_lines(shared_data, 0, TRAIN_LINES)), encoding="utf-8")
    assert import_file(db, path).labels_added == TRAIN_LINES
    base = dict(max_length=MAX_LENGTH, device="cpu", epochs=1, lr=1e-3, batch_tokens=4096)
    return train_and_publish(db, settings, TrainConfig(**(base | cfg)))


def _held_out(shared_data: Path) -> list[tuple[str, list[tuple[str, str]], str, str]]:
    """(prompt, history, chosen, rejected) of HH pairs no version trained on."""
    out = []
    for r in _hh_lines(shared_data, TRAIN_LINES, TRAIN_LINES + HELD_OUT):
        prompt, history, chosen, rejected = split_transcripts(r["chosen"], r["rejected"])
        out.append((prompt, [(m["role"], m["content"]) for m in history or []], chosen, rejected))
    return out


def _messages(prompt: str, history: list[tuple[str, str]], response: str) -> list[dict[str, str]]:
    return ([{"role": role, "content": text} for role, text in history]
            + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])


def _rmstudio_score(version: int, rows: list[tuple[str, list, str]], tmp_path: Path, capsys) -> list[float]:
    """Raw scores of ``rmstudio score --file ... --json`` for (prompt, history, response) rows."""
    path = tmp_path / "to-score.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "history": [{"role": r, "content": t} for r, t in h],
                                        "response": resp}) + "\n" for p, h, resp in rows), encoding="utf-8")
    capsys.readouterr()
    assert main(["score", "--file", str(path), "--json", "--model", str(version)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model_version"] == version and len(out["scores"]) == len(rows)
    return [s["raw"] for s in out["scores"]]


def _winners(raw: list[float]) -> list[bool]:
    return [a > b for a, b in zip(raw[0::2], raw[1::2])]


@pytest.mark.parametrize("recipe", [
    dict(mode="head", backbone="enc", features="rich", epochs=40, lr=1e-2),  # the default mode and features
    dict(mode="finetune", backbone="enc", pooling="mean"),
    dict(mode="finetune", backbone="dec-chat", lora=True, lr=1e-2),  # a decoder's chat template
], ids=["head-rich", "finetune-encoder-mean", "finetune-decoder-chat-lora"])
def test_exports_score_real_long_pairs_as_rmstudio_score(recipe: dict, sqlite_db: Database, settings: Settings,
                                                         backbones: Path, shared_data: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from transformers import pipeline

    v = _train_on_hh(sqlite_db, settings, shared_data, tmp_path, **(recipe | {"backbone": str(backbones /
                                                                                              recipe["backbone"])}))
    out = tmp_path / "exported"
    assert export_version(sqlite_db, settings, v.id, out)["input"]["one_string_exact"]
    pairs = _held_out(shared_data)
    rows = [(p, h, resp) for p, h, c, r in pairs for resp in (c, r)]  # chosen, rejected, chosen, ...
    want = _rmstudio_score(v.id, rows, tmp_path, capsys)

    ns = card_snippet(out)  # the model card's token ids, untruncated
    ids = [ns["input_ids"](p, resp, h) for p, h, resp in rows]
    assert sum(len(x) > MAX_LENGTH for x in ids) >= 0.75 * len(ids)  # mostly past the version's max length
    tok, model = ns["tok"], ns["model"]
    width = max(map(len, ids))
    with torch.no_grad():
        by_ids = model(input_ids=torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in ids]),
                       attention_mask=torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])).logits[:, 0]

    texts = [tok.apply_chat_template(_messages(p, h, resp), tokenize=False) for p, h, resp in rows]
    trl_style = tok(text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    with torch.no_grad():
        by_string = model(**trl_style).logits[:, 0]  # as GRPOTrainer calls a reward model
    rm = pipeline("text-classification", model=str(out), trust_remote_code=True)
    by_pipeline = [d["score"] for d in rm(texts, batch_size=8)]  # as RewardBench calls one

    for got in (by_ids.tolist(), by_string.tolist(), by_pipeline):
        assert max(abs(a - b) for a, b in zip(got, want)) < 1e-4
        assert _winners(got) == _winners(want)
    assert len({round(x, 4) for x in want}) > len(want) // 2  # real, varied scores


def test_trl_grpo_trains_a_step_with_the_exported_folder_as_reward(sqlite_db: Database, settings: Settings,
                                                                   backbones: Path, shared_data: Path,
                                                                   tmp_path: Path) -> None:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    v = _train_on_hh(sqlite_db, settings, shared_data, tmp_path, mode="head", backbone=str(backbones / "enc"),
                     features="rich", epochs=20, lr=1e-2)
    out = tmp_path / "rm-export"
    export_version(sqlite_db, settings, v.id, out)
    pairs = _held_out(shared_data)[:4]
    prompts = [[{"role": r, "content": t} for r, t in h] + [{"role": "user", "content": p}] for p, h, _, _ in pairs]
    prompts[0] = [{"role": "system", "content": "You are a careful assistant."}] + prompts[0]  # as TRL may send
    ours = reward_function(RewardModel.load(sqlite_db, settings, v.id), kind="raw")
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=8, num_generations=2,
                      max_completion_length=8, max_steps=1, learning_rate=1e-5, logging_steps=1, report_to="none",
                      save_strategy="no", use_cpu=True, bf16=False, seed=0,
                      trust_remote_code=True)  # loads the folder's modeling_rmstudio.py
    trainer = GRPOTrainer(model=str(backbones / "policy"), reward_funcs=[str(out), ours], args=args,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]))
    trainer.train()

    assert trainer.state.global_step == 1
    # TRL keeps each completion's reward per reward function: the exported folder's equal RM Studio's own
    exported, rmstudio = list(trainer._logs["rewards"][out.name]), list(trainer._logs["rewards"][ours.__name__])
    assert len(exported) == len(rmstudio) == 8
    assert exported == pytest.approx(rmstudio, abs=1e-4)
    assert len({round(x, 5) for x in exported}) > 1
    logged = next(h for h in trainer.state.log_history if f"rewards/{out.name}/mean" in h)
    assert logged[f"rewards/{out.name}/mean"] == pytest.approx(sum(exported) / len(exported), abs=1e-4)


def _readme_block(heading: str) -> str:
    """The Python block under a README heading."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split(f"### {heading}\n", 1)[1].split("\n#", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_trl_and_pipeline_snippets_work_as_printed(sqlite_db: Database, settings: Settings, backbones: Path,
                                                          shared_data: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    v = _train_on_hh(sqlite_db, settings, shared_data, tmp_path, mode="head", backbone=str(backbones / "enc"),
                     epochs=20, lr=1e-2)
    folder = tmp_path / "rm-v7"
    export_version(sqlite_db, settings, v.id, folder)
    monkeypatch.chdir(tmp_path)  # the snippets' relative paths: rm-v7, grpo-out
    policy = str(backbones / "policy")
    ours = RewardModel.load(sqlite_db, settings, v.id)

    ns: dict = {}
    code = _readme_block("RewardBench-style evaluation: one chat-formatted string")
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - the README's own snippet
    user, assistant = ns["chat"]
    assert ns["rm"](ns["text"])[0]["score"] == pytest.approx(
        ours.score(user["content"], [assistant["content"]])[0].raw, abs=1e-4)

    code = _readme_block("TRL: GRPO with the exported folder")
    assert code.count('"Qwen/Qwen2.5-0.5B-Instruct"') == 1
    ns = {}
    exec(compile(code.replace('"Qwen/Qwen2.5-0.5B-Instruct"', repr(policy)), "README.md", "exec"), ns)  # noqa: S102
    trainer = ns["trainer"]
    assert trainer.state.global_step >= 1
    logs = trainer._logs
    got = list(logs["rewards"]["rm-v7"])
    want = reward_function(ours, kind="raw")(list(logs["prompt"]), list(logs["completion"]))
    assert len(got) == len(want) > 0 and got == pytest.approx(want, abs=1e-4)
