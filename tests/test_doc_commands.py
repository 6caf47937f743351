"""Every command in the README and docs/ parses, and every documented program runs in its
smoke form (issues 18 and 17).

The commands are collected from the markdown itself (code spans and code blocks,
``\\`` continuations joined, ``# comments`` dropped), so a command added to a doc is
covered without editing this test.  Running all of them for real would take hours
(paper-scale trainings), so this test:

- parses every collected ``python -m experiments.X ...`` / ``python -m benchmarks.X
  ...`` command with that program's own parser (`argparse.parse_known_args` is made to
  stop right after parsing: a flag the program no longer has, a bad choice or a bad
  number fails here, and nothing runs);
- runs ``--help`` of every program named in the docs, for real, in this process;
- runs ``--list`` of every experiment for real;
- runs every documented *program* (module, and subcommand for ``experiments.dcn``) in its
  smoke form: tiny configs and limits, for real, here (`SMOKE_HERE`) when that costs
  seconds, or names the test that already runs it (`SMOKE_ELSEWHERE`, checked to exist),
  or says why it cannot run on a CPU (`NEEDS_GPU`, skipped with that reason).  A program
  newly documented without a smoke form fails `test_every_documented_program_has_a_smoke_form`.
"""

import argparse
import glob
import importlib
import os
import re
import shlex

import jax
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


LISTS = {"experiments.classify": "chen-mnist-odenet", "experiments.dcn": "smoke",
         "experiments.segment": "camvid-small", "experiments.flow": "smoke",
         "experiments.curve": "smoke", "experiments.node_ew_mnist": "smoke",
         "experiments.transfer": "smoke"}


@pytest.mark.parametrize("module", sorted(LISTS))
def test_every_experiment_lists_its_configs(module, capsys):
    """``--list`` works for every experiment: each names its configs and what they reproduce."""
    try:
        status = importlib.import_module(module).main(["--list"])
    except SystemExit as e:
        status = e.code
    out = capsys.readouterr().out
    assert status in (None, 0) and LISTS[module] in out and len(out.splitlines()) >= 2


# ------------------------------------------ every documented program, in its smoke form


def program(module: str, argv: list[str]) -> str:
    """``experiments.dcn contrast`` for a dcn subcommand, else the module."""
    if module == "experiments.dcn" and argv and not argv[0].startswith("-"):
        return f"{module} {argv[0]}"
    return module


DOCUMENTED = sorted({program(m, a) for _, m, a in COMMANDS})

# Run for real below, in an empty folder, with tiny sizes (seconds each).  Each entry is a
# chain of commands (a later one may read what an earlier one wrote) and the files the
# chain must leave behind.
_CLASSIFY = ["--config", "smoke-digits", "--channels", "4", "--solver", "euler",
             "--euler-steps", "2", "--epochs", "1", "--batch-size", "32", "--train-limit", "64",
             "--test-limit", "16", "--eval-batch-size", "16", "--tol-sweep", "",
             "--no-per-sample", "--no-progress", "--runs-dir", "runs"]
SMOKE_HERE = {
    "experiments.classify": ([("experiments.classify", _CLASSIFY)],
                             ["runs/smoke-digits/summary.json"]),
    "experiments.flow": ([("experiments.flow", [
        "--config", "smoke", "--densities", "moons", "--models", "fixed", "--iters", "2",
        "--hidden", "4", "--test-size", "20", "--grid", "4", "--name", "flow"])],
        ["runs/flow/summary.json"]),
    "experiments.curve": ([("experiments.curve", [
        "--config", "smoke", "--hidden", "4", "--euler-iters", "2", "--euler-steps", "4",
        "--finetune-iters", "1", "--pure-iters", "1", "--pure-seconds", "5", "--name",
        "curve"])], ["runs/curve/summary.json"]),
}

# Programs whose smoke form another test runs for real: "file::test".
SMOKE_ELSEWHERE = {
    "benchmarks.tolerance":
        "tests/test_bench_tolerance.py::test_sweep_reuses_one_compilation_and_writes_files",
    "experiments.dcn classify": "tests/test_gpu_campaign.py::test_dry_run_end_to_end",
    "experiments.dcn contrast": "tests/test_dcn_experiments.py::test_contrast_and_completion_cli",
    "experiments.dcn completion": "tests/test_dcn_experiments.py::test_contrast_and_completion_cli",
    "experiments.dcn small-data-table":
        "tests/test_dcn_experiments.py::test_small_data_table_groups_seeds_and_skips_unfinished",
    "experiments.segment": "tests/test_segment_resume.py::test_chunks_and_resume_equal_one_run",
    "experiments.transfer":
        "tests/test_transfer_cli.py::test_transfer_cli_writes_results_and_reuses_features",
    "benchmarks.suite": "tests/test_bench_suite.py::test_suite_tiny_cnf",
    "benchmarks.memory":
        "tests/test_bench_memory.py::test_cli_writes_results_and_counts_euler_evaluations",
    "benchmarks.scaling":
        "tests/test_bench_scaling.py::test_two_host_devices_give_the_single_device_loss_and_gradients",
    "benchmarks.profile_field":
        "tests/test_profile_field.py::test_tiny_run_writes_results_and_counts_canonical_convolutions",
    "benchmarks.stage_data":
        "tests/test_gpu_campaign.py::test_stage_data_writes_loadable_zips_within_the_limit",
    "benchmarks.kill_resume":
        "tests/test_reliability_kill.py::test_kills_in_checkpoint_writes_lose_nothing_and_reproduce_the_run",
    "experiments.evaluate": "tests/test_load_run.py::test_evaluate_command_reports_the_runs_numbers",
    "benchmarks.cnf_regularizers": "tests/test_cnf_regularizers.py::test_cnf_regularizers_smoke",
    "benchmarks.xla_cpu_options": "tests/test_bench_xla_cpu_options.py::test_vjp_smoke_writes_every_variant",
    "benchmarks.reg_mnist": "tests/test_reg_mnist.py::test_runner_and_report_on_a_tiny_digits_campaign",
}

# Programs no CPU test runs in full, and why (the test below checks each excuse is current).
NOT_ON_CPU = {
    "benchmarks.gpu_campaign": "the campaign itself needs the lent GPU; its --dry-run (the "
                               "same code at tiny sizes) runs in tests/test_gpu_campaign.py",
    "experiments.dcn small-data": "trains the DCN field (one XLA compile of its training step "
                                  "takes ~30-60 s on 2 cores); the same training code runs "
                                  "through `dcn classify` in tests/test_gpu_campaign.py",
    "experiments.node_ew_mnist": "its smoke config trains four models for two epochs "
                                 "(minutes on 2 cores); docs/results/reliability.md measured it",
    "benchmarks.phase_step_time": "times MNIST training steps of NODE-EW and the ODE-Net in "
                                  "both phases (compiles four steps, minutes on 2 cores); "
                                  "results/README.md gives the measured run",
    "benchmarks.jacobian_reg_cost": "compiles the MNIST ODE-Net's training step once per "
                                    "regulariser setting (25-75 s each on 2 cores); "
                                    "docs/results/regularizers.md gives the measured run",
    "benchmarks.dcn_kernel_cost": "compiles a DCN training step per support mode (~1 min each "
                                  "on 2 cores); its argument checks run in "
                                  "tests/test_reliability_cli.py",
    "benchmarks.gradient_accuracy": "needs a float64 reference solve per strategy (minutes); "
                                    "docs/results/ode_core.md gives the measured run",
    "experiments.dcn reconstruct": "compiles the encoder-decoder's training step (~40 s on 2 "
                                   "cores); tests/test_dcn_experiments.py::test_reconstruct_cli "
                                   "runs it with JAXODE_SLOW_TESTS=1",
    "benchmarks.odeblock": "times every gradient mode of the Chen block, each its own XLA "
                           "compile (~2 min on 2 cores even at tiny sizes); "
                           "docs/results/benchmarks.md gives the measured run",
    "benchmarks.fidelity": "compares every model with its reference port (minutes); "
                           "docs/models.md gives the measured run",
    "benchmarks.node_ew_smoke_probe": "a diagnosis run of issue 18 (minutes); "
                                      "docs/results/reliability.md gives its output",
}


def test_every_documented_program_has_a_smoke_form():
    covered = set(SMOKE_HERE) | set(SMOKE_ELSEWHERE) | set(NOT_ON_CPU)
    missing = [p for p in DOCUMENTED if p not in covered]
    assert not missing, f"documented programs without a smoke form here: {missing}"
    for prog, where in SMOKE_ELSEWHERE.items():
        path, name = where.split("::")
        with open(os.path.join(ROOT, path)) as f:
            assert f"def {name}(" in f.read(), f"{prog}: {where} does not exist"


@pytest.mark.parametrize("prog", sorted(SMOKE_HERE))
def test_documented_program_runs_in_smoke_form(prog, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    chain, outputs = SMOKE_HERE[prog]
    for module, argv in chain:
        try:  # JAX's default promotion, as a user runs it (optax's Adam needs it)
            with jax.numpy_dtype_promotion("standard"):
                status = importlib.import_module(module).main(list(argv))
        except SystemExit as e:
            status = e.code
        assert status in (None, 0) or isinstance(status, (dict, list)), (
            f"`python -m {module} {' '.join(argv)}` ended with {status}: "
            f"{capsys.readouterr().err[-500:]}")
    for out in outputs:
        assert (tmp_path / out).exists(), f"{prog} did not write {out}"


@pytest.mark.parametrize("prog", sorted(NOT_ON_CPU))
def test_programs_not_run_on_cpu_are_documented_with_a_reason(prog):
    """An entry of NOT_ON_CPU excuses a program the docs name: a stale entry (the
    program no longer documented, or also run here or elsewhere) fails."""
    assert prog in DOCUMENTED, f"{prog} is excused in NOT_ON_CPU but no doc runs it"
    assert prog not in SMOKE_HERE and prog not in SMOKE_ELSEWHERE, prog
    assert len(NOT_ON_CPU[prog]) > 20, f"{prog}: say why it is not run on the CPU"
