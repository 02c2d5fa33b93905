"""Every example of the README runs as written: each ```python block is executed, each command
of each ```bash block is run (``ssmbench ...`` in-process, in a folder holding a stored run and
its baseline). A comment right before a block, ``<!-- test: "PREFIX" MODE (REASON); ... -->``,
says how its commands that start with PREFIX are tested instead: ``parse`` (ssmbench's parser
checks every option and value; nothing runs) or ``skip`` (not ssmbench: installs, nox sessions;
``"python" skip`` for a Python block that needs the network);
the reason shows in the test's id and output. A command that is not ssmbench and has no mark
fails the test, so nothing in the README goes untested unsaid."""
import re
import shlex
import shutil
from pathlib import Path

import pytest

from ssmbench.harness import cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARK = re.compile(r'"([^"]+)"\s+(parse|skip)\s+\(([^)]*)\)')
# The stored run the commands use; RUN in a command stands for its id.
RUN_OF = "scaling"


def blocks(text: str) -> list[tuple[str, str, dict[str, tuple[str, str]]]]:
    """(language, code, marks) of every ```bash and ```python block; marks: prefix -> (mode, reason)."""
    out = []
    for match in re.finditer(r"(?:<!-- test:(?P<marks>.*?)-->\n)?```(?P<lang>bash|python)\n(?P<code>.*?)```",
                             text, re.S):
        marks = {p: (m, r) for p, m, r in MARK.findall(match["marks"] or "")}
        out.append((match["lang"], match["code"], marks))
    return out


def commands(code: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, trailing comments dropped, each
    side of ``&&`` apart."""
    joined = re.sub(r"\s*\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        line = line.split("  #")[0].split(" # ")[0].strip()
        out += [part.strip() for part in line.split("&&") if part.strip()]
    return out


def how(command: str, marks: dict) -> tuple[str, str]:
    """(mode, reason): the longest marked prefix the command starts with, else run."""
    found = sorted((p for p in marks if command.startswith(p)), key=len, reverse=True)
    return marks[found[0]] if found else ("run", "")


def examples() -> list:
    params = []
    text = README.read_text()
    for number, (lang, code, marks) in enumerate(blocks(text)):
        if lang == "python":
            mode, reason = marks.get("python", ("run", ""))
            params.append(pytest.param("python", code, mode, reason,
                                       id=f"python block {number} [{mode}{': ' + reason if reason else ''}]"))
            continue
        for command in commands(code):
            mode, reason = how(command, marks)
            shown = f"{command} [{mode}{': ' + reason if reason else ''}]"
            params.append(pytest.param("bash", command, mode, reason, id=shown))
    return params


def test_the_readme_has_examples_of_both_kinds():
    kinds = {lang for lang, _, _ in blocks(README.read_text())}
    assert kinds == {"bash", "python"}
    assert commands("a --x \\\n    --y 1   # note\nb && c") == ["a --x --y 1", "b", "c"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder as a user's would be after one run: results/<run> and its stored baseline."""
    source = next((ROOT / "results" / "baselines" / RUN_OF).iterdir())
    shutil.copytree(source, tmp_path / "results" / f"run-{source.name}")
    shutil.copytree(source, tmp_path / "results" / "baselines" / RUN_OF / source.name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SSMBENCH_RESULTS", raising=False)
    return tmp_path


@pytest.mark.parametrize("lang, code, mode, reason", examples())
def test_readme_example(lang, code, mode, reason, workdir, capsys):
    if mode == "skip":
        pytest.skip(reason)
    if lang == "python":
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
        return
    argv = shlex.split(code)
    assert argv[0] == "ssmbench", f"{code!r} is not an ssmbench command and has no test mark before its block"
    run_id = next(p.name for p in (workdir / "results").iterdir() if p.name != "baselines")
    argv = [run_id if a == "RUN" else a for a in argv[1:] if a != "[RUN...]"]
    if mode == "parse":
        names_exist(cli.build_parser().parse_args(argv))
        print(f"parsed, not run: {reason}")
        return
    assert cli.main(argv) == 0, capsys.readouterr().err


def names_exist(args) -> None:
    """What a parsed command names exists: a run's suites and preset, a comparison's op and shape."""
    from ssmbench.impls import get_op
    from ssmbench.suites import get_suite

    if args.command == "run" and args.suite:
        for name in args.suite.split(","):
            suite = get_suite(name)
            assert (args.preset or suite.default_preset) in suite.presets, f"{name} has no preset {args.preset}"
    if args.command == "compare":
        op = get_op(args.op)
        op.problem_type.from_params({**op.default_problem.params(), **args.shape})
