"""wandb is an optional extra: a run without it logs to metrics.jsonl (offline mode: one warning), online mode
without it is a one-line error before training."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides
from tests.runs import argv, assert_one_line_error, series
from train.__main__ import main


def test_offline_mode_without_wandb_trains_and_warns(text_corpus: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError; find_spec gives None
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"log.wandb": '"offline"', "train.max_steps": 2})
    assert main(argv(sets, tmp_path / "run")) == 0
    err = capsys.readouterr().err
    assert "warning: wandb is not installed" in err and "Traceback" not in err
    assert sorted(series(tmp_path / "run", "train/loss")) == [1, 2]


def test_online_mode_without_wandb_is_a_one_line_error(text_corpus: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"log.wandb": '"online"'})
    rc = main(argv(sets, tmp_path / "run"))
    assert_one_line_error(rc, capsys.readouterr().err, "log.wandb='online'", "wandb")
    assert not (tmp_path / "run" / "checkpoints").exists()


def _no_credentials(monkeypatch, home: Path) -> None:
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "wandb-config"))


def test_online_mode_without_an_api_key_fails_before_the_run_folder_exists(text_corpus: Path, tmp_path: Path,
                                                                           monkeypatch, capsys) -> None:
    _no_credentials(monkeypatch, tmp_path / "home")
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"log.wandb": "online"})
    rc = main(argv(sets, tmp_path / "run"))
    assert_one_line_error(rc, capsys.readouterr().err, "log.wandb='online' needs a W&B API key", "wandb login")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("source", ["env", "netrc", "settings"])
def test_wandb_credentials_are_found_where_wandb_login_puts_them(tmp_path: Path, monkeypatch, source: str) -> None:
    from train.config import LogConfig
    from train.metrics import check_wandb

    home = tmp_path / "home"
    _no_credentials(monkeypatch, home)
    home.mkdir()
    if source == "env":
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    elif source == "netrc":
        (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
        (home / ".netrc").chmod(0o600)
    else:
        (home / "wandb-config").mkdir()
        (home / "wandb-config" / "settings").write_text("[default]\napi_key = " + "x" * 40 + "\n")
    check_wandb(LogConfig(wandb="online"))  # no error


class _FakeWandb(types.ModuleType):
    """Records wandb.init's arguments (no network, no files)."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        self.inits: list[dict] = []

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return types.SimpleNamespace(log=lambda *a, **k: None, finish=lambda: None)


def test_wandb_settings_and_run_ids_unique_per_run_kept_on_resume(text_corpus: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{
        "log.wandb": "online", "log.wandb_entity": "team", "log.wandb_group": "sweep-a",
        "log.wandb_tags": '["moe", "smoke"]', "log.wandb_name": "point-1", "train.max_steps": 2, "train.ckpt_every": 1})
    assert main(argv(sets, tmp_path / "a", "--stop-after", "1")) == 0  # paused after step 1 (checkpointed)
    assert main(argv(sets, tmp_path / "a", "--resume")) == 0
    assert main(argv(sets, tmp_path / "b")) == 0  # same name and settings, another folder (or machine)
    first, resumed, other = fake.inits
    assert {k: first[k] for k in ("project", "entity", "group", "tags", "name", "mode", "resume")} == {
        "project": "hyperp-moe", "entity": "team", "group": "sweep-a", "tags": ["moe", "smoke"], "name": "point-1",
        "mode": "online", "resume": "allow"}
    assert resumed["id"] == first["id"] != other["id"]
    assert len(first["id"]) == 12 and first["id"].isalnum()
