"""The commands in README.md and docs/*.md run the project's CLIs with flags those CLIs have.

Every fenced shell block is read as a shell would split it (line continuations joined, comments
dropped, `&&` / `||` / `;` / `|` chains split, `NAME=value` prefixes skipped). A command that
starts one of the project's CLIs (`python tools/x.py`, `python benchmarks/.../x.py`,
`python -m megatron_masklm...`, `torchrun ... x.py` or `torchrun ... -m module`, a console
script from the packaging files, an `examples/` launcher that forwards its arguments to the
training CLI) must name a script or module that exists, and every `--flag` (and `-x`) it passes,
up to a `--` separator, must appear in that CLI's `--help`. Each distinct CLI's `--help` runs
once, in a subprocess; nothing heavier runs. A failure names the doc file, its line and the flag.
The relative links of the same files must point at files and headings that exist.
"""
import ast
import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "zsh"}
PROJECT_DIRS = ("tools/", "benchmarks/", "examples/")
TRAIN_MODULE = "megatron_masklm.train"
CHAIN = {"&&", "||", ";", "|", "|&", "&"}
REDIRECTS = {">", ">>", "<", ">&", "&>", "<<", "<<<"}
WRAPPERS = {"env", "time", "nohup", "exec", "command"}
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")
PYTHON = re.compile(r"(?:.*/)?python(?:3(?:\.\d+)?)?|\$\{?PYTHON\}?")
FLAG = re.compile(r"--[A-Za-z][\w-]*|-[A-Za-z]")
HELP_OPTION = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*")


@dataclass(frozen=True)
class Cli:
    """What a doc command starts: a repository script (run by python or bash) or a module."""
    kind: str  # "script", "bash", "module" (python -m) or "entry" (a console script: module:function)
    target: str


@dataclass(frozen=True)
class DocCommand:
    where: str  # "docs/x.md:12"
    text: str
    cli: Cli
    args: Tuple[str, ...]

    @property
    def flags(self) -> List[str]:
        """The options passed, before any `--` separator; shell variables are not options."""
        found = []
        for token in self.args:
            if token == "--":
                break
            name = token.split("=", 1)[0]
            if "$" not in token and FLAG.fullmatch(name) and name not in found:
                found.append(name)
        return found


def console_scripts() -> dict:
    """Console-script name -> "module:function", from pyproject.toml and setup.py."""
    scripts = {}
    pyproject = ROOT / "pyproject.toml"
    if pyproject.exists():
        import tomllib
        scripts.update(tomllib.loads(pyproject.read_text()).get("project", {}).get("scripts", {}))
    setup = ROOT / "setup.py"
    if setup.exists():
        for node in ast.walk(ast.parse(setup.read_text())):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == "console_scripts":
                        for item in ast.literal_eval(value):
                            name, _, target = item.partition("=")
                            scripts[name.strip()] = target.strip()
    return scripts


SCRIPTS = console_scripts()


def shell_lines(path: Path):
    """(line number, logical line) for each line of the file's fenced shell blocks, with `\\`
    continuations joined onto the line that starts them."""
    fence, pending, start = None, "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if fence is None:
                fence = stripped[3:].strip().lower() or "plain"
            else:
                fence = None
            continue
        if fence not in SHELL_LANGUAGES:
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield start, pending + stripped
        pending = ""


def split_commands(line: str) -> List[List[str]]:
    """A logical shell line as its simple commands: comments gone, chains and pipes split,
    redirections dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current, skip = [], [], False
    for token in lexer:
        if skip:
            skip = False
        elif token in CHAIN:
            commands.append(current)
            current = []
        elif token in REDIRECTS or re.fullmatch(r"\d?[<>]+&?", token):
            skip = True
        else:
            current.append(token)
    commands.append(current)
    return [command for command in commands if command]


def forwards_to_train(script: Path, seen: frozenset = frozenset()) -> bool:
    """Whether a launcher passes its own arguments ("$@") on to the training CLI, itself or
    through another examples/ script it starts."""
    text = script.read_text(encoding="utf-8")
    if '"$@"' not in text or script in seen:
        return False
    if re.search(r"-m\s+" + re.escape(TRAIN_MODULE) + r"\b", text):
        return True
    return any(forwards_to_train(ROOT / other, seen | {script})
               for other in re.findall(r"examples/[\w./-]+\.(?:sh|sbatch)", text)
               if (ROOT / other).is_file())


def from_launcher(args: List[str]) -> Optional[Tuple[Cli, List[str]]]:
    """torchrun [its options] script.py ARGS | -m module ARGS."""
    for index, token in enumerate(args):
        if token == "-m" and index + 1 < len(args):
            return module_cli(args[index + 1], args[index + 2:])
        if token.endswith(".py"):
            return Cli("script", token), args[index + 1:]
    return None


def module_cli(module: str, args: List[str]) -> Optional[Tuple[Cli, List[str]]]:
    if module == "torch.distributed.run":
        return from_launcher(args)
    if module.split(".")[0] == "megatron_masklm":
        return Cli("module", module), args
    return None  # pip, pytest, venv, ...: not this project's


def parse_command(tokens: List[str]) -> Optional[Tuple[Cli, List[str]]]:
    """The project CLI a simple command starts and the arguments it passes, or None."""
    index = 0
    while index < len(tokens) and (ASSIGNMENT.fullmatch(tokens[index]) or tokens[index] in WRAPPERS):
        index += 1
    if index == len(tokens):
        return None
    program, args = tokens[index], tokens[index + 1:]
    name = os.path.basename(program)
    if name in SCRIPTS:
        return Cli("entry", SCRIPTS[name]), args
    if name == "torchrun":
        return from_launcher(args)
    if PYTHON.fullmatch(program):
        position = 0
        while position < len(args) and args[position].startswith("-"):
            option = args[position]
            if option == "-m" and position + 1 < len(args):
                return module_cli(args[position + 1], args[position + 2:])
            if option == "-c":
                return None
            position += 2 if option in ("-X", "-W") else 1
        if position < len(args) and args[position].startswith(PROJECT_DIRS):
            return Cli("script", args[position]), args[position + 1:]
        return None
    if name in ("bash", "sh") and args:
        program, args = args[0], args[1:]
    if program.startswith(PROJECT_DIRS) and program.endswith((".sh", ".sbatch")):
        path = ROOT / program
        if path.is_file() and forwards_to_train(path):
            return Cli("module", TRAIN_MODULE), args
        return Cli("bash", program), args
    return None


def doc_commands(paths=DOCS) -> List[DocCommand]:
    found = []
    for path in paths:
        for number, line in shell_lines(path):
            for tokens in split_commands(line):
                parsed = parse_command(tokens)
                if parsed:
                    cli, args = parsed
                    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                    found.append(DocCommand(f"{shown}:{number}",
                                            shlex.join(tokens), cli, tuple(args)))
    return found


def missing_reason(cli: Cli) -> Optional[str]:
    """Why the CLI cannot run at all (its script or module is not there), or None."""
    if cli.kind in ("script", "bash"):
        return None if (ROOT / cli.target).is_file() else f"{cli.target} does not exist"
    module = cli.target.split(":")[0]
    try:
        found = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        found = None
    return None if found else f"module {module} does not exist"


@functools.lru_cache(maxsize=None)
def help_output(cli: Cli, subcommand: str = "") -> Tuple[int, str]:
    """`--help` of a CLI (of one of its subcommands), run once per CLI in a subprocess."""
    sub = [subcommand] if subcommand else []
    if cli.kind == "script":
        text = (ROOT / cli.target).read_text(encoding="utf-8")
        if "argparse" not in text and not re.search(r"^from megatron_masklm\S* import main\b",
                                                    text, re.M):
            return 1, f"{cli.target} parses no options (no argparse): running it with --help would run it"
        command = [sys.executable, cli.target, *sub, "--help"]
    elif cli.kind == "bash":
        if "--help" not in (ROOT / cli.target).read_text(encoding="utf-8"):
            return 1, f"{cli.target} has no --help"
        command = ["bash", cli.target, *sub, "--help"]
    elif cli.kind == "module":
        command = [sys.executable, "-m", cli.target, *sub, "--help"]
    else:  # a console script's module:function, called as the installed script would call it
        module, function = cli.target.split(":")
        command = [sys.executable, "-c", f"import sys; from {module} import {function}; "
                   f"sys.exit({function}())", *sub, "--help"]
    env = {**os.environ, "COLUMNS": "250", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def help_options(command: DocCommand) -> Tuple[set, str]:
    """Every option the CLI's --help names (with its subcommand's, when the command gives one)."""
    returncode, text = help_output(command.cli)
    assert returncode == 0 and "usage" in text.lower(), (
        f"{command.where}: `{command.cli.target} --help` failed (exit {returncode}):\n{text[-3000:]}")
    options = set(HELP_OPTION.findall(text))
    positionals = [arg for arg in command.args if not arg.startswith("-")]
    choices = re.search(r"\{([\w,-]+)\}", text)
    if choices and positionals and positionals[0] in choices.group(1).split(","):
        returncode, sub_text = help_output(command.cli, positionals[0])
        assert returncode == 0, f"{command.where}: `{command.cli.target} {positionals[0]} --help` failed"
        options |= set(HELP_OPTION.findall(sub_text))
        text += sub_text
    return options, text


def unknown_flags(command: DocCommand) -> List[str]:
    if not command.flags:
        return []
    options, _ = help_options(command)
    return [flag for flag in command.flags if flag not in options]


COMMANDS = doc_commands()


def test_the_docs_hold_commands_for_the_main_clis():
    """A guard on the parser: if it stopped recognising commands, the checks below would pass
    vacuously."""
    targets = {command.cli.target for command in COMMANDS}
    assert {"tools/convert_hf_to_megatron.py", "tools/prune_oneshot.py", "tools/eval_ppl.py",
            "tools/estimate_memory.py", "benchmarks/smollm2_cpu/run.py", TRAIN_MODULE} <= targets
    assert sum(len(command.flags) for command in COMMANDS) >= 40


@pytest.mark.parametrize("command", COMMANDS, ids=[command.where for command in COMMANDS])
def test_doc_command_uses_only_flags_its_cli_has(command):
    reason = missing_reason(command.cli)
    assert reason is None, f"{command.where}: {reason}: `{command.text}`"
    unknown = unknown_flags(command)
    assert not unknown, (f"{command.where}: {', '.join(unknown)} not in "
                         f"`{command.cli.target} --help`: `{command.text}`")


def test_parser_reads_commands_as_a_shell_would(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("\n".join([
        "```bash",
        "# a comment: python tools/nothing.py --not-a-command",
        "CI=true OMP_NUM_THREADS=1 python tools/verify_nm.py masks.npz \\",
        "    --pattern 2:4 --quiet | tail -1 && echo done",
        'torchrun --nproc-per-node 2 --nnodes 1 tools/eval_ppl.py --load "$RUN" --text=a.txt',
        "python -m megatron_masklm.train --config x.yaml -- --after-separator $EXTRA",
        "megatron-masklm-train --bf16 > log.txt 2>&1",
        "python3 -m pip install -e . ; python -c 'print(1)' --x",
        "```",
        "```python",
        "print('python tools/verify_nm.py --not-shell')",
        "```",
    ]) + "\n")
    commands = doc_commands([doc])
    assert [(c.cli, c.flags) for c in commands] == [
        (Cli("script", "tools/verify_nm.py"), ["--pattern", "--quiet"]),
        (Cli("script", "tools/eval_ppl.py"), ["--load", "--text"]),
        (Cli("module", TRAIN_MODULE), ["--config"]),
        (Cli("entry", "megatron_masklm.train:main"), ["--bf16"]),
    ]
    assert [c.where.rsplit(":", 1)[1] for c in commands] == ["3", "5", "6", "7"]


def test_a_flag_the_cli_lacks_is_reported(tmp_path):
    """The check itself: a made-up flag is named, the real ones pass (verify_nm.py's --help
    costs no megatron import)."""
    doc = tmp_path / "doc.md"
    doc.write_text("```bash\npython tools/verify_nm.py m.npz --pattern 2:4 --no-such-flag\n"
                   "python tools/no_such_tool.py --pattern 2:4\n```\n")
    real, gone = doc_commands([doc])
    assert unknown_flags(real) == ["--no-such-flag"]
    assert missing_reason(gone.cli) == "tools/no_such_tool.py does not exist"


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=[str(doc.relative_to(ROOT)) for doc in DOCS])
def test_relative_links_point_at_files_and_headings_that_exist(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, fragment = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and linked.suffix == ".md":
            headings = re.findall(r"^#+\s+(.*)$", linked.read_text(encoding="utf-8"), re.M)
            if fragment not in {anchor(heading) for heading in headings}:
                broken.append(f"{target} (no such heading)")
    assert not broken, f"{doc.relative_to(ROOT)}: {broken}"
