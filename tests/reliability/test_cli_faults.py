"""Issue 22 (7, 8): the tools around a run answer a bad ``--out``, a run without tokenizer, a non-UTF-8 or too-long
path and a full disk with one line; Ctrl-C saves a checkpoint as SIGTERM does, and never suggests ``--resume`` when
nothing was saved."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides
from tests.models.test_hf_moe import build, tiny_moe
from tests.runs import argv, assert_one_line_error, series
from train.__main__ import EXIT_INTERRUPTED, main
from train.checkpoint import list_checkpoints, save
from train.config import DataConfig, RunConfig
from train.lock import LOCK_FILE
from train.loop import Trainer
from train.tokenizer import train_bpe

ROOT = Path(__file__).resolve().parents[2]
NON_UTF8 = os.fsdecode(b"out-\xff")  # what Python makes of undecodable bytes on the command line (surrogateescape)


def _run(capsys, tool, args: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = tool(args)
    out, err = capsys.readouterr()
    return rc, out, err


def _bad_out(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """An --out a tool cannot write into, and the text its one error line must hold."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    return {"file": (blocker, "exists and is not a directory"),
            "under-a-file": (blocker / "sub", "Not a directory"),  # the OS refuses: an OSError, named
            "non-utf8": (tmp_path / NON_UTF8, "is not valid UTF-8")}[kind]


# ------------------------------------------------------------------------------------------------ export and plot


def _hand_built_run(run_dir: Path, tokenizer: bool) -> None:
    cfg = tiny_moe(vocab_size=300, moe=None)
    state = {"config": RunConfig(name="tiny", model=cfg, data=DataConfig(seq_len=32)).to_dict(),
             "model": build(cfg, seed=6).state_dict()}
    save(run_dir, 3, state)
    if tokenizer:
        train_bpe(["the router routes every token to two experts."] * 4, 300, "bpe-300").save(run_dir / "tokenizer")


@pytest.mark.parametrize("kind", ["file", "under-a-file", "non-utf8"])
def test_export_to_an_unwritable_out_is_one_line(tmp_path: Path, capsys, kind: str) -> None:
    from train.export import main as export_main

    _hand_built_run(tmp_path / "run", tokenizer=True)
    out, needle = _bad_out(tmp_path, kind)
    rc, _, err = _run(capsys, export_main, ["--run", str(tmp_path / "run"), "--out", str(out)])
    assert_one_line_error(rc, err, "--out" if kind != "under-a-file" else str(out), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "run"]


def test_export_of_a_run_without_tokenizer_is_refused_unless_asked(tmp_path: Path, capsys) -> None:
    from train.export import main as export_main

    _hand_built_run(tmp_path / "run", tokenizer=False)
    args = ["--run", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]
    rc, _, err = _run(capsys, export_main, args)
    assert_one_line_error(rc, err, "has no tokenizer/", "--without-tokenizer")
    assert not (tmp_path / "hf").exists()
    assert export_main([*args, "--without-tokenizer"]) == 0
    assert (tmp_path / "hf" / "config.json").is_file() and not (tmp_path / "hf" / "tokenizer.json").exists()


@pytest.mark.parametrize("kind", ["file", "under-a-file", "non-utf8"])
def test_plot_to_an_unwritable_out_is_one_line(tmp_path: Path, capsys, kind: str) -> None:
    from train.plot import main as plot_main

    (tmp_path / "run").mkdir()
    lines = [json.dumps({"step": s, "time": 0.0, "train/loss": 5.0 / s}) for s in range(1, 5)]
    (tmp_path / "run" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    out, needle = _bad_out(tmp_path, kind)
    rc, _, err = _run(capsys, plot_main, [str(tmp_path / "run"), "--out", str(out)])
    assert_one_line_error(rc, err, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "run"]


# ------------------------------------------------------------------------------------------------ training


def test_train_out_that_is_not_utf8_is_refused_before_any_work(text_corpus: Path, tmp_path: Path, capsys) -> None:
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 2})
    rc, _, err = _run(capsys, main, argv(sets, tmp_path / NON_UTF8))
    assert_one_line_error(rc, err, "--out", "out-\\xff", "is not valid UTF-8")
    assert list(tmp_path.iterdir()) == []  # not even the token cache


def test_too_long_out_is_refused_before_the_steps(text_corpus: Path, tmp_path: Path, capsys) -> None:
    """Issue 22 (8): it failed only at the first checkpoint, after the steps ran. A path just under the OS limit
    (PATH_MAX, 4096 on Linux) is accepted by mkdir but leaves no room for checkpoints/step_…/state.pt."""
    limit = os.pathconf(tmp_path, "PC_PATH_MAX")
    out = tmp_path / "long"
    while len(os.fsencode(out)) < limit - 300:
        out = out / ("d" * 200)
    out = out / ("e" * (limit - 50 - len(os.fsencode(out)) - 1))  # 50 bytes left: fewer than a checkpoint needs
    assert len(os.fsencode(out)) == limit - 50
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 2})
    rc, _, err = _run(capsys, main, argv(sets, out))
    assert_one_line_error(rc, err, f"is {limit - 50} bytes long", f"limit of {limit} bytes", "choose a shorter --out")
    assert list(tmp_path.iterdir()) == []  # refused before the data was prepared or a step ran


def test_a_full_disk_is_one_line_naming_the_folder(text_corpus: Path, tmp_path: Path) -> None:
    """A real refusal by the kernel: RLIMIT_FSIZE lets the small files through (tokenizer ~21 kB, config, metrics) but
    not a checkpoint (~640 kB), whose write then fails with EFBIG — like ENOSPC, an error without a file name (issue
    22 (8): "cannot access: No space left on device")."""
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 6, "train.ckpt_every": 3})
    assert main(argv(sets, tmp_path / "warm", "--max-steps", "1")) == 0  # the token cache, written without limit
    run = tmp_path / "run"

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "train", *argv(sets, run)], cwd=ROOT, env=env, text=True,
                          capture_output=True, preexec_fn=limit_file_size, timeout=300)
    assert_one_line_error(proc.returncode, proc.stderr, f"cannot write {run / 'checkpoints'}", "File too large")
    assert sorted(series(run, "train/loss")) == [1, 2, 3]  # it stopped at the first checkpoint
    assert list_checkpoints(run) == [] and (run / "tokenizer" / "tokenizer.json").is_file()


def test_ctrl_c_finishes_the_step_saves_and_resumes_identically(text_corpus: Path, tmp_path: Path, capsys,
                                                               monkeypatch) -> None:
    """Issue 22 (8): Ctrl-C saved no checkpoint (SIGTERM did). A real SIGINT to this process during step 2."""
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 6, "train.ckpt_every": 5})
    assert main(argv(sets, tmp_path / "whole")) == 0
    original_step = Trainer.train_step

    def train_step(self):
        if self.state.step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return original_step(self)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    run = tmp_path / "run"
    rc, out, err = _run(capsys, main, argv(sets, run))
    assert rc == EXIT_INTERRUPTED, err
    assert "done:" not in out  # issue 22 (8): "done … val loss nan" came before "stopped early"
    (line,) = [x for x in err.splitlines() if x.strip()]
    assert line.startswith("stopped early at step 2: interrupted (Ctrl-C)") and "step_000002" in line, err
    assert "continue with --resume" in line
    monkeypatch.setattr(Trainer, "train_step", original_step)
    assert main(argv(sets, run, "--resume")) == 0
    assert series(run, "train/loss") == series(tmp_path / "whole", "train/loss")  # bit-identical


@pytest.mark.parametrize("when", ["preparing", "first-step", "after-a-checkpoint"])
def test_an_abort_says_truthfully_what_was_saved(text_corpus: Path, tmp_path: Path, capsys, monkeypatch,
                                                 when: str) -> None:
    """A KeyboardInterrupt that is not the graceful first Ctrl-C (one before training, or a second one): the advice
    names the checkpoint to continue from, or says that none was saved — never a bare "--resume" that would fail."""
    import train.build

    abort_at = {"first-step": 0, "after-a-checkpoint": 4}.get(when)
    if abort_at is None:
        monkeypatch.setattr(train.build, "build_components", _raise_interrupt)
    else:
        original_step = Trainer.train_step

        def train_step(self):
            if self.state.step == abort_at:
                raise KeyboardInterrupt
            return original_step(self)

        monkeypatch.setattr(Trainer, "train_step", train_step)
    run = tmp_path / "run"
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 6, "train.ckpt_every": 3})
    rc, _, err = _run(capsys, main, argv(sets, run))
    assert rc == EXIT_INTERRUPTED and "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if x.strip()]
    expected = {"preparing": "interrupted: nothing was saved",
                "first-step": "interrupted: no checkpoint was saved",
                "after-a-checkpoint": f"interrupted: continue from {run / 'checkpoints' / 'step_000003'} with --resume"}
    assert line == expected[when], err
    assert not (run / LOCK_FILE).exists()  # the lock is released on the way out


def _raise_interrupt(*args, **kwargs):
    raise KeyboardInterrupt
