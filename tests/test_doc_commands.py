"""Every command in the README and docs/ still parses (issue 18).

The commands are collected from the markdown itself (code spans and code blocks,
``\\`` continuations joined, ``# comments`` dropped), so a command added to a doc is
covered without editing this test.  Running all of them for real would take hours
(paper-scale trainings), so this test:

- parses every collected ``python -m experiments.X ...`` / ``python -m benchmarks.X
  ...`` command with that program's own parser (`argparse.parse_known_args` is made to
  stop right after parsing: a flag the program no longer has, a bad choice or a bad
  number fails here, and nothing runs);
- runs ``--help`` of every program named in the docs, for real, in this process;
- runs ``python -m experiments.classify --list`` for real.

The README's training command in its smoke form runs for real in
`tests/test_classify.py` (two 1-batch runs of ``--config smoke-digits``), and the
smoke forms of segment and dcn in their own test files.
"""

import argparse
import glob
import importlib
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md")] + sorted(
    glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
# The docs' placeholders, replaced by a value of the right kind before parsing.
PLACEHOLDERS = {"MODEL": "dcn_ode", "NAME": "smoke-digits", "DATA": "data", "RUN": "runs/x",
                "FOLDER": "runs/x", "T": "0.5", "K": "1", "N": "2", "PATH": "data"}
COMMAND = re.compile(r"python3? -m ((?:experiments|benchmarks)\.[a-z_]+)(.*)")


def _snippets(text: str):
    """Fenced and indented code lines and code spans (a span may wrap a line)."""
    text = text.replace("\\\n", " ")
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        yield from block.splitlines()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    yield from (line for line in text.splitlines() if line.startswith("    "))
    yield from (span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", text))


def collect_commands() -> list[tuple[str, str, list[str]]]:
    """``(doc, module, argv)`` of every documented command, duplicates removed."""
    seen, out = set(), []
    for doc in DOCS:
        with open(doc) as f:
            text = f.read()
        for snippet in _snippets(text):
            m = COMMAND.search(snippet)
            if not m:
                continue
            rest = re.sub(r"<[^>]+>", "x", re.split(r"\s#|&&|\||;", m.group(2))[0])
            try:
                argv = shlex.split(rest)
            except ValueError:  # an unbalanced quote inside prose
                continue
            argv = [PLACEHOLDERS.get(a, a) for a in argv]
            if "--help" in argv or "-h" in argv:  # covered by test_documented_program_help
                continue
            key = (m.group(1), tuple(argv))
            if key not in seen:
                seen.add(key)
                out.append((os.path.relpath(doc, ROOT), m.group(1), argv))
    return out


COMMANDS = collect_commands()


class _Parsed(Exception):
    pass


def test_the_docs_hold_commands():
    modules = {m for _, m, _ in COMMANDS}
    assert len(COMMANDS) > 40 and {"experiments.classify", "experiments.dcn",
                                   "benchmarks.suite"} <= modules


@pytest.mark.parametrize("doc, module, argv", COMMANDS,
                         ids=[f"{m} {' '.join(a)}"[:80] for _, m, a in COMMANDS])
def test_documented_command_parses(doc, module, argv, monkeypatch, capsys):
    # parse_args and subcommands both go through parse_known_args: stop right after it
    original = argparse.ArgumentParser.parse_known_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_then_stop)
    main = importlib.import_module(module).main
    with pytest.raises(_Parsed) as parsed:
        try:
            main(argv)
        except SystemExit as e:
            pytest.fail(f"{doc}: `python -m {module} {' '.join(argv)}` does not parse: "
                        f"{capsys.readouterr().err.strip()[-300:]} (exit {e.code})")
    _, extras = parsed.value.args[0]
    assert not extras, f"{doc}: `python -m {module}` has no arguments {extras}"


@pytest.mark.parametrize("module", sorted({m for _, m, _ in COMMANDS}))
def test_documented_program_help(module, capsys):
    with pytest.raises(SystemExit) as info:
        importlib.import_module(module).main(["--help"])
    assert info.value.code == 0 and "usage:" in capsys.readouterr().out


def test_classify_list_runs(capsys):
    from experiments.classify import main

    assert main(["--list"]) == 0
    assert "smoke-digits" in capsys.readouterr().out
