"""The README's user guide must match the CLI: every `osum ...` command line in its shell blocks parses."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from osum.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" # ")[0].strip()
            line = re.sub(r"\s*\[[^\]]*\]", "", line)  # [optional parts] of a usage synopsis
            line = re.split(r"\s[>|]\s", line)[0].strip()
            if line.startswith(("osum ", ".venv/bin/osum ")):
                commands.append(line)
            elif " -m osum.cli " in line:  # torchrun ... -m osum.cli train ...
                commands.append("osum " + line.split(" -m osum.cli ", 1)[1])
    return commands


def test_the_readme_shows_commands():
    assert len(readme_commands()) >= 15


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_parses(line):
    argv = shlex.split(line)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as err:
        pytest.fail(f"README command does not parse ({err.code}): {line}")
