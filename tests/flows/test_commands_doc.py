"""The front door cannot drift: the command and exit-status tables in the README, docs/commands.md and the
`lifecycle` docstring are what the parser and the ExitStatus enum generate (`python -m flows.commands_doc`)."""

from __future__ import annotations

import argparse
import shutil
from enum import IntEnum
from pathlib import Path

from flows import cli, commands_doc
from stages.common.errors import ExitStatus

REPO = Path(__file__).resolve().parents[2]


def test_the_readme_the_commands_page_and_the_cli_docstring_are_what_the_parser_generates():
    assert commands_doc.stale() == [], "run `python -m flows.commands_doc` and commit what it writes"


def test_every_command_option_and_exit_status_is_in_the_tables():
    parser = cli.parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    page = (REPO / "docs" / "commands.md").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name, command in sub.choices.items():
        for text in (page, readme, cli.__doc__):
            assert f"lifecycle {name}" in text, name
        row = next(
            line for line in page.splitlines() if line.startswith((f"| `lifecycle {name}`", f"| `lifecycle {name} "))
        )
        for action in command._actions:
            if action.dest != "help":
                flag = action.option_strings[-1] if action.option_strings else action.dest.upper()
                assert flag in row, (name, flag)
    for status in ExitStatus:
        assert f"| `{int(status)}` | `{status.name}` |" in page and f"| `{int(status)}` | `{status.name}` |" in readme
    assert "6 production crossed a monitor threshold" in " ".join(cli.__doc__.split())


def _copy(root: Path) -> Path:
    for name in (*commands_doc.MARKDOWN_FILES, "flows/cli.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    return root


def test_a_command_missing_from_a_page_or_a_new_status_fails_and_regenerating_mends_it(tmp_path, monkeypatch):
    root = _copy(tmp_path)
    page = root / "docs" / "commands.md"
    rows = page.read_text(encoding="utf-8").splitlines(keepends=True)
    page.write_text("".join(r for r in rows if not r.startswith("| `lifecycle snapshot`")), encoding="utf-8")
    assert commands_doc.stale(root) == [page]

    Extended = IntEnum("ExitStatus", {**{s.name: int(s) for s in ExitStatus}, "SOMETHING_NEW": 7})
    monkeypatch.setattr(commands_doc, "ExitStatus", Extended)
    assert set(commands_doc.stale(root)) == {root / "README.md", page, root / "flows" / "cli.py"}

    for path, text in commands_doc.generated(root).items():
        path.write_text(text, encoding="utf-8")
    assert commands_doc.stale(root) == []
    assert "| `lifecycle snapshot` |" in page.read_text(encoding="utf-8")
    assert "| `7` | `SOMETHING_NEW` |" in page.read_text(encoding="utf-8")


def test_the_check_exits_1_on_a_stale_file(tmp_path, monkeypatch, capsys):
    root = _copy(tmp_path)
    readme = root / "README.md"
    readme.write_text(readme.read_text(encoding="utf-8").replace("| `lifecycle loop` |", "| `lifecycle lop` |"))
    monkeypatch.setattr(commands_doc, "ROOT", root)
    assert commands_doc.main(["--check"]) == ExitStatus.ERROR
    assert "README.md: out of date" in capsys.readouterr().err
    assert commands_doc.main([]) == ExitStatus.OK and commands_doc.main(["--check"]) == ExitStatus.OK
