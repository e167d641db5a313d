"""Every command: help text for every flag, help without TensorFlow, and every command the
README (and docs) show parses with the real command-line parsers."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PROJECT

from cxr_tf import cli, testing

COMMANDS = ["convert", "synth", "explore", "fit", "evaluate", "localize", "tune", "export",
            "predict", "demo"]  # fmt: skip
BENCH = ["convert", "read", "pipeline", "fit", "shards", "serve"]
DOCS = [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md")),
        PROJECT / "tuning" / "README.md", PROJECT / "tfrecords" / "README.md"]  # fmt: skip


def _help(module: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", f"cxr_tf.{module}", *args, "--help"],
        cwd=PROJECT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _undocumented(text: str) -> list[str]:
    """Options in an argparse help screen that have no description."""
    section = text.split("options:", 1)[1]
    lines = section.splitlines()
    missing = []
    for i, line in enumerate(lines):
        match = re.match(
            r"^  (-[-\w.]+(?:, --[-\w.]+)?)(?: [A-Z_.{},\[\]\s]+?)?(\s{2,}\S.*)?$", line
        )
        if not match:
            continue
        described = match.group(2) is not None
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if not described and not re.match(r"^\s{8,}\S", following):
            missing.append(match.group(1))
    return missing


@pytest.mark.parametrize("module", COMMANDS)
def test_every_flag_has_a_description(module):
    text = _help(module)
    assert "options:" in text
    assert _undocumented(text) == []
    assert "INFO" not in text and "oneDNN" not in text


@pytest.mark.parametrize("what", BENCH)
def test_every_bench_flag_has_a_description_and_default(what):
    text = _help("bench", what)
    assert _undocumented(text) == []
    assert "(default:" in text


@pytest.mark.parametrize("module", COMMANDS + ["bench"])
def test_help_does_not_start_tensorflow(module):
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['cxr_tf.{module}', '--help']\n"
        "try:\n"
        f"    runpy.run_module('cxr_tf.{module}', run_name='__main__', alter_sys=True)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('TF-LOADED' if 'tensorflow.python' in sys.modules else 'TF-NOT-LOADED')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.strip().endswith("TF-NOT-LOADED"), proc.stdout[-300:] + proc.stderr[-500:]


def test_field_docs_come_from_the_config_source():
    from cxr_tf.config import ConvertConfig, TrainConfig

    docs = cli.field_docs(ConvertConfig)
    assert docs["shard_seed"].startswith("Seed of the random order")
    assert "present on disk" in docs["present_only"]
    assert set(docs) >= {f for f in ConvertConfig.__dataclass_fields__ if f != "split"}
    assert set(cli.field_docs(TrainConfig)) == set(TrainConfig.__dataclass_fields__)


# --- the documented commands ----------------------------------------------------------------


def _commands(path: Path) -> list[tuple[str, str]]:
    """(where, command line) for every line of the fenced bash blocks of a Markdown file."""
    found = []
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S)
    for block in blocks:
        variables: dict[str, str] = {}
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            assignment = re.match(r"^(?:export )?([A-Z_]+)=\"(.*)\"$", line)
            if assignment:
                variables[assignment.group(1)] = assignment.group(2)
            for name, value in variables.items():
                line = line.replace(f"${name}", value)
            found.append((f"{path.name}: {line[:60]}", line))
    return found


def _invocations(line: str) -> list[list[str]]:
    """The cxr_tf invocations in a shell line, as argument lists after `-m cxr_tf.X`."""
    line = re.split(r"\s+#\s", line)[0]
    out = []
    for part in re.split(r"&&|\|\||;|\||&(?!\S)", line):
        words = shlex.split(part)
        if "-m" in words and words[words.index("-m") + 1].startswith("cxr_tf."):
            out.append(words)
    return out


DOCUMENTED = [item for path in DOCS for item in _commands(path)]


def test_the_readme_opens_with_the_two_commands():
    first = [line for _, line in _commands(PROJECT / "README.md")][:2]
    assert first[0].startswith("python3 -m venv .venv && .venv/bin/pip install -e '.[test]'")
    assert first[0].endswith(".venv/bin/python -m cxr_tf.demo")
    assert first[1] == ".venv/bin/python -m pytest tests -n 2"
    # CI runs the README's test command, exactly
    ci = (PROJECT / ".ci" / "run").read_text().splitlines()
    assert first[1] in ci


@pytest.mark.parametrize("where,line", DOCUMENTED, ids=[w for w, _ in DOCUMENTED])
def test_documented_command_parses(where, line, monkeypatch, capsys):
    for words in _invocations(line):
        python = words[words.index("-m") - 1]
        assert python == ".venv/bin/python", f"{where}: use .venv/bin/python, not {python}"
        module, args = words[words.index("-m") + 1], words[words.index("-m") + 2 :]
        assert not any(a.startswith("[") for a in args), f"{where}: not pasteable: {args}"
        monkeypatch.setenv(testing.CHECK_ARGS, "1")
        main = importlib.import_module(module).main
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 0, f"{where}: {capsys.readouterr().err}"
        assert "arguments ok" in capsys.readouterr().err


@pytest.mark.slow
def test_commands_load_a_run_in_a_fresh_process(trained_run, tmp_path):
    """The commands start TensorFlow lazily: a new process must still find the project's
    Keras classes when it loads a saved model."""
    import shutil

    run = shutil.copytree(trained_run, tmp_path / "run")  # evaluate writes thresholds.json
    for args in (
        ["evaluate", "--run_dir", str(run), "--bootstrap", "20", "--out",
         str(tmp_path / "eval"), "--quiet"],
        ["localize", "--run_dir", str(run), "--overlays", "1", "--out",
         str(tmp_path / "loc"), "--quiet"],
    ):  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", f"cxr_tf.{args[0]}", *args[1:]],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "eval" / "report.md").exists()
    assert (tmp_path / "loc" / "localization.md").exists()


@pytest.mark.slow
def test_the_cheap_readme_commands_run_as_written(tmp_path):
    """The README's CPU-sized data commands (synthetic data, conversion, verify) run as
    written, from a scratch folder standing in for the project folder."""
    lines = [line for _, line in _commands(PROJECT / "README.md")]
    cheap = [
        line for line in lines
        if line.startswith(".venv/bin/python -m cxr_tf.synth --out demo/synth_300")
        or "--root demo/synth_300" in line
    ]  # fmt: skip
    assert len(cheap) == 2, cheap
    cheap.append(".venv/bin/python -m cxr_tf.convert --verify demo/tfrecords/synth_64")
    for line in cheap:
        words = shlex.split(line)
        words[0] = sys.executable
        proc = subprocess.run(words, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-1500:]}"
    assert "verify: ok" in proc.stdout


# --- old names ------------------------------------------------------------------------------


def test_old_flags_still_work_and_help_says_they_are_old(tmp_path, capsys):
    from cxr_tf import bench
    from cxr_tf.config import ConvertConfig, RunConfig

    parser = cli.build_parser(ConvertConfig, "", "convert")
    config, _ = cli.parse_config(ConvertConfig, parser, ["--nih_root", "d", "--image_size", "64"])
    assert (config.root, config.stored_size) == ("d", 64)
    text = " ".join(parser.format_help().split())
    assert "--image_size STORED_SIZE the old name of --stored_size, still accepted" in text
    assert "--nih_root ROOT the old name of --root, still accepted" in text

    parser = cli.build_parser(RunConfig, "", "fit")
    old = tmp_path / "old.json"
    old.write_text('{"model": {"image_size": 96}}')  # a --config file of an older version
    run, _ = cli.parse_config(RunConfig, parser, ["--config", str(old)])
    assert run.model.input_size == 96
    run, _ = cli.parse_config(RunConfig, parser, ["--config", str(old), "--model.input_size", "64"])
    assert run.model.input_size == 64  # flags beat the file, whatever name either uses
    run, _ = cli.parse_config(RunConfig, parser, ["--model.image_size", "32"])
    assert run.model.input_size == 32
    assert "the old name of --model.input_size" in " ".join(parser.format_help().split())

    _, config, _ = bench.parse(["convert", "--size", "128"])
    assert config.stored_size == 128


def test_the_front_door_lists_every_command_and_runs_them(capsys):
    import subprocess
    import sys

    from cxr_tf import __main__ as front

    # every command module of the package (a module with `main`) is listed, and only those
    package = Path(front.__file__).parent
    modules = {
        p.stem for p in package.glob("*.py")
        if not p.stem.startswith("_") and "\ndef main(" in p.read_text()
    }  # fmt: skip
    assert set(front.COMMANDS) == modules
    listing = subprocess.run(
        [sys.executable, "-m", "cxr_tf"], capture_output=True, text=True, timeout=60
    )
    assert listing.returncode == 0
    lines = [line.split()[0] for line in listing.stdout.splitlines() if line.startswith("  ")]
    assert lines == list(front.COMMANDS)
    assert front.main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
    # a command runs with its own flags and exit code
    with pytest.raises(SystemExit) as exit_:
        front.main(["synth", "--help"])
    assert exit_.value.code == 0 and "--layout" in capsys.readouterr().out


def _parsers_of(module_name: str, argv: list[str], monkeypatch) -> list:
    """The parsers a command builds, caught as it parses `argv` (nothing else runs)."""
    import argparse

    module = importlib.import_module(f"cxr_tf.{module_name}")
    caught = []

    def catch(self, *args, **kwargs):
        caught.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", catch)
    with pytest.raises(SystemExit):
        module.main(argv)
    return caught


def _bare(help_text: str | None) -> str:
    """A help string without its default part: what is left describes the option."""
    text = re.sub(r"\(default: .*\)$|\(empty by default\)$", "", help_text or "", flags=re.S)
    return text.strip()


@pytest.mark.parametrize("module", [*COMMANDS, "bench"])
def test_every_option_of_every_parser_says_what_it_does(module, monkeypatch):
    """Walks each parser's own actions (flags added by the command as well as config
    fields): every option has a description beyond its default, and no parser takes
    abbreviated flags."""
    from cxr_tf import bench

    parsers = _parsers_of(module, [], monkeypatch)
    if module == "bench":
        parsers += [bench.parser_for(what) for what in bench.COMMANDS]
    assert parsers
    for parser in parsers:
        assert parser.allow_abbrev is False, parser.prog
        bare = [
            "/".join(action.option_strings) or action.dest
            for action in parser._actions
            if not isinstance(action, type(parser._actions[0])) and not _bare(action.help)
        ]
        assert bare == [], f"{parser.prog}: options without a description: {bare}"


@pytest.mark.parametrize(
    "command, prog",
    [(["-m", "cxr_tf.convert"], "convert"), (["-m", "cxr_tf", "convert"], "cxr-tf convert")],
    ids=["python -m cxr_tf.convert", "cxr-tf convert"],
)
def test_ctrl_c_while_tensorflow_is_imported_is_one_line_and_130(
    command, prog, synth_small, tmp_path
):
    """Ctrl-C in the seconds before a command's own handling starts (TensorFlow being
    imported: its library already mapped into the process) ends with one line and status
    130, not a traceback."""
    import signal
    import time

    argv = [*command, "--root", str(synth_small), "--out_dir", str(tmp_path / "out")]
    process = subprocess.Popen(
        [sys.executable, *argv], cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    maps, deadline = Path(f"/proc/{process.pid}/maps"), time.time() + 60
    try:
        while "libtensorflow" not in maps.read_text():
            assert process.poll() is None and time.time() < deadline, process.communicate()
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and ":0000" not in line]
    assert lines[-1] == f"{prog}: interrupted", err
