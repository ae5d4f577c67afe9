"""The lm-evaluation-harness adapter (train.eval.harness.HyperpLM), offline: local YAML tasks over JSON files this
test writes from held-out documents (a next-word cloze and 2-choice items), run by lm-eval itself; every
loglikelihood lm-eval received is checked against our model's log-probs of the same text, computed directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.config import ModelConfig
from models.qwen3 import Qwen3
from moe.config import MoEConfig
from train.tokenizer import train_bpe

pytest.importorskip("lm_eval", reason="optional extra: pip install -e .[eval]")

CLOZE = """task: heldout_cloze
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{continuation}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
CHOICE = """task: heldout_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def heldout_items(corpus: Path) -> tuple[list[str], list[dict], list[dict]]:
    """(training texts, cloze items, 2-choice items): the last 10 documents are held out; an item is a sentence's
    end (up to 8 words, well inside max_seq_len) and its last word (the choice's distractor: the last word of the
    next sentence)."""
    docs = [p.read_text() for p in sorted(corpus.glob("*.txt"))]
    sentences = [s.strip() for doc in docs[-10:] for s in doc.replace("\n", " ").split(".") if len(s.split()) > 3]
    pairs = [(" ".join(s.split()[-9:-1]), " " + s.split()[-1]) for s in sentences[:12]]  # ≤ 8 context words
    cloze = [{"context": c, "continuation": w} for c, w in pairs]
    choice = [{"context": c, "choices": [w, pairs[(i + 1) % len(pairs)][1]], "label": 0}
              for i, (c, w) in enumerate(pairs) if w != pairs[(i + 1) % len(pairs)][1]]
    return docs[:-10], cloze, choice


def direct_logprob(model: Qwen3, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """Σ log p(continuation | context) from one unpadded forward of the whole text (no adapter code)."""
    ctx = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    assert whole[:len(ctx)] == ctx  # the continuation starts at a token boundary (it starts with a space)
    cont = whole[len(ctx):]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0, -len(cont):], dim=-1)
    picked = logprobs.gather(-1, torch.tensor(cont)[:, None])[:, 0]
    return float(picked.sum()), bool((logprobs.argmax(-1) == torch.tensor(cont)).all())


@pytest.mark.slow  # lm-eval and datasets imports and task building: ~1 min on 2 busy cores
def test_local_tasks_through_lm_eval_score_our_models_logprobs(text_corpus: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    import lm_eval
    from lm_eval.tasks import TaskManager

    from train.eval.harness import HyperpLM

    train_texts, cloze, choice = heldout_items(text_corpus)
    tokenizer = train_bpe(train_texts, 400, "bpe-test")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, template, items in (("cloze", CLOZE, cloze), ("choice", CHOICE, choice)):
        data = tasks / f"{name}.jsonl"
        data.write_text("".join(json.dumps(item) + "\n" for item in items))
        (tasks / f"{name}.yaml").write_text(template.format(data=data))
    torch.manual_seed(0)  # a SqrtGate MoE: no export and no trust_remote_code needed in-process
    model = Qwen3(ModelConfig(vocab_size=tokenizer.vocab_size, hidden=32, n_layers=2, n_heads=2, n_kv_heads=1,
                              mlp_hidden=64, max_seq_len=64,
                              moe=MoEConfig(num_experts=4, top_k=2, expert_hidden=32, gate="sqrt"))).double().eval()
    results = lm_eval.simple_evaluate(model=HyperpLM(model, tokenizer, batch_size=4),
                                      tasks=["heldout_cloze", "heldout_choice"],
                                      task_manager=TaskManager(include_path=str(tasks)), log_samples=True)
    greedy_hits = []
    for sample in results["samples"]["heldout_cloze"]:
        (context, continuation), = sample["arguments"]
        (ll, greedy), = sample["resps"][0]
        expected_ll, expected_greedy = direct_logprob(model, tokenizer, context, continuation)
        assert ll == pytest.approx(expected_ll, rel=1e-10) and greedy == expected_greedy
        greedy_hits.append(expected_greedy)
    assert len(greedy_hits) == len(cloze)
    assert results["results"]["heldout_cloze"]["acc,none"] == pytest.approx(sum(greedy_hits) / len(cloze))
    correct = []
    for sample in results["samples"]["heldout_choice"]:
        lls = [resp[0][0] for resp in sample["resps"]]
        expected = [direct_logprob(model, tokenizer, *args)[0] for args in sample["arguments"]]
        assert lls == pytest.approx(expected, rel=1e-10)
        correct.append(max(range(2), key=lambda i: expected[i]) == sample["doc"]["label"])
    assert len(correct) == len(choice) > 5
    assert results["results"]["heldout_choice"]["acc,none"] == pytest.approx(sum(correct) / len(correct))


@pytest.mark.slow  # a 2-step run, then lm-eval through the command line: ~1 min
def test_tasks_command_on_a_run(text_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from tests.conftest import tiny_overrides
    from tests.runs import argv, assert_one_line_error
    from train.__main__ import main as train_main
    from train.eval.__main__ import main as eval_main

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    run = tmp_path / "run"
    assert train_main(argv(tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 2}), run)) == 0
    _, _, choice = heldout_items(text_corpus)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "choice.jsonl").write_text("".join(json.dumps(item) + "\n" for item in choice))
    (tasks / "choice.yaml").write_text(CHOICE.format(data=tasks / "choice.jsonl"))
    out = tmp_path / "results.json"
    assert eval_main([str(run), "--tasks", "heldout_choice", "--include-path", str(tasks), "--out", str(out)]) == 0
    acc = json.loads(out.read_text())["tasks"]["heldout_choice"]["acc,none"]
    assert 0.0 <= acc <= 1.0 and "heldout_choice" in capsys.readouterr().out
    assert eval_main([str(run), "--tasks", "no_such_task", "--include-path", str(tasks)]) == 2
    assert_one_line_error(2, capsys.readouterr().err, "unknown lm-eval task(s) no_such_task")
