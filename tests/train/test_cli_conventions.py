"""Every command line of the project: ``--help`` with a whole-sentence description, help text on every option and its
default shown; one spelling per concept (``--run``, ``--checkpoint``, ``--max-steps``, ``--out``)."""

from __future__ import annotations

import importlib

import pytest

from train.cli import Parser

COMMANDS = ("train.__main__", "train.generate", "train.export", "train.convert", "train.plot", "train.sweep",
            "train.transfer", "train.doctor", "train.data.__main__", "train.data.shards", "train.transfer_check",
            "train.coord_check")
# spellings that were replaced (the one to use in parentheses): none of them may come back
OLD_SPELLINGS = {"--steps": "--max-steps", "--run-dir": "--run", "--step": "--checkpoint", "--output": "--out"}


def _parser(module: str) -> Parser:
    return importlib.import_module(module).build_parser()


@pytest.mark.parametrize("module", COMMANDS)
def test_help_describes_every_option_with_its_default(module: str, capsys) -> None:
    parser = _parser(module)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert text.startswith(f"usage: {parser.prog}") and parser.description.endswith(".")
    assert "".join(parser.description.split()) in "".join(text.split())  # whole, not cut (wrapping may split at "-")
    for action in parser._actions:
        assert action.help, f"{module}: {action.option_strings or action.dest} has no help text"
        hidden = action.default is None or action.default is False or action.default in ("", [], "==SUPPRESS==")
        if not hidden and not action.required and action.option_strings:
            assert f"(default: {action.default})" in text, f"{module}: {action.option_strings} default not shown"
        assert not set(action.option_strings) & set(OLD_SPELLINGS), f"{module}: {action.option_strings}"


@pytest.mark.parametrize("module", ["train.generate", "train.export", "train.convert"])
def test_commands_reading_a_run_spell_it_alike(module: str) -> None:
    options = {o for a in _parser(module)._actions for o in a.option_strings}
    assert {"--run", "--checkpoint"} <= options
