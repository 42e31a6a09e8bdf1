"""What a newcomer meets on the command line: every option has a help text, a typo'd option
gets the subcommand's usage with a suggestion, sizes say how to write them, and
``python -m wdstream`` is the ``wdstream`` command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from wdstream.cli import COMMANDS, build_parser, main

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)


def test_every_option_of_every_command_has_a_help_text():
    parser = build_parser()
    assert set(parser.commands) == set(COMMANDS)
    missing = [("wdstream", a.dest) for a in parser._actions if not a.help]
    for name, sub in parser.commands.items():
        missing += [
            (name, a.option_strings[0] if a.option_strings else a.dest)
            for a in sub._actions
            if not a.help
        ]
    assert missing == []


def test_a_typo_in_an_option_shows_the_subcommand_usage_and_the_closest_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["convert", "src", "out", "--max-shards-bytes", "10MB"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: wdstream convert")
    assert "unrecognized arguments: --max-shards-bytes 10MB" in err
    assert "did you mean --max-shard-bytes" in err


def test_a_typo_in_a_command_suggests_the_command(capsys):
    with pytest.raises(SystemExit):
        main(["conver", "src", "out"])
    assert "did you mean 'convert'?" in capsys.readouterr().err


def test_an_unreadable_size_says_how_to_write_one(capsys):
    with pytest.raises(SystemExit) as e:
        main(["convert", "src", "out", "--max-shard-bytes", "10XB"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: wdstream convert")
    assert "cannot read size '10XB'; write e.g. 256MB, 512MiB, 1GiB" in err
    assert "invalid" not in err


def test_python_dash_m_wdstream_is_the_command(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.path.abspath(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "wdstream", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for name in COMMANDS:
        assert name in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "wdstream", "index", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "--out URL" in out.stdout
