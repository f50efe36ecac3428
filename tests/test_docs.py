"""The README and the manual in docs/ say only true things a test can check: every relative link
and #anchor resolves, every flag a command passes exists in that command's parser, every module
or file named exists, and the README's exit-code table is the code's.

Parsers are read from `--help` in subprocesses (what a user sees), once per command."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
FRONT_PAGE_MAX_LINES = 200

# Flags of programs that are not ours, as the docs use them (accelerate, torchrun, SLURM).
EXTERNAL_FLAGS = frozenset({"--multi_gpu", "--num_processes", "--cpu", "--nnodes", "--nproc_per_node",
                            "--max-restarts", "--node-rank", "--rdzv-endpoint", "--requeue", "--signal"})


# -- reading markdown ---------------------------------------------------------------------
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)


def code_blocks(text: str, language: str | None = None) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if language is None or lang == language]


def prose(text: str) -> str:
    """The text outside fenced code blocks (each block replaced by a blank line)."""
    return FENCE.sub("\n", text)


def inline_spans(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", prose(text))


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped (but - and _), spaces -> -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor on a page; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", prose(path.read_text()), re.M):
        slug = github_slug(heading)
        found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return found


def relative_links(text: str) -> list[str]:
    targets = re.findall(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose(text))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto:


def shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in relative_links(page.read_text()):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            problems.append(f"{target}: no such file {shown(dest)}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {shown(dest)}")
    return problems


# -- commands and their parsers -------------------------------------------------------------
# tool -> how to run it; whether a word after it that is not a subcommand is fine (a positional
# of the tool's own parser, e.g. generate.py CHECKPOINT or the metric of progan.metrics).
TOOLS = {
    "train.py": (("train.py",), True),
    "generate.py": (("generate.py",), True),
    "data_prep": (("-m", "data_prep"), False),
    "progan.metrics": (("-m", "progan.metrics"), True),
}
SEPARATORS = {";", "&&", "||", "|", "&"}
# A word that is no subcommand: `TOOL POSITIONAL --help` shows the parser that takes such a word (the
# tool's own, or the one of its default subcommand: generate.py RUN = generate.py sample RUN).
POSITIONAL = "POSITIONAL"


@lru_cache(maxsize=None)
def help_text(tool: str, sub: str | None = None) -> str:
    command = [sys.executable, *TOOLS[tool][0], *([sub] if sub else []), "--help"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})
    return proc.stdout if proc.returncode == 0 else ""


def help_flags(text: str) -> set[str]:
    """The option strings of an argparse help text: its option lines ('  -h, --help', '  --out DIR  ...')."""
    flags = set()
    for line in text.splitlines():
        if re.match(r"^ {2}-", line):
            invocation = re.split(r"\s{2,}", line.strip())[0]
            flags.update(part.split()[0].split("=")[0] for part in invocation.split(", ") if part.startswith("-"))
    return flags


def usage_prog(text: str) -> str:
    match = re.search(r"usage: (\S+(?: -m \S+)?)", text)
    return match.group(1) if match else ""


@lru_cache(maxsize=None)
def subcommands(tool: str) -> frozenset[str]:
    """Subcommands the tool's top-level help names (argparse choices {a,b}, a listed sub-parser, or
    `PROG word` in its description), each confirmed by its own --help naming it in its usage."""
    top = help_text(tool)
    prog = usage_prog(top)
    words = set(re.findall(rf"{re.escape(prog)} ([a-z][\w-]*)", top)) if prog else set()
    usage = re.sub(r"--?[\w-]+ \{[^}]*\}", "", top.split("\n\n")[0])  # choices of options are not commands
    for choices in re.findall(r"\{([\w,-]+)\}", usage):
        words.update(choices.split(","))
    words.update(re.findall(r"^ {4}([a-z][\w-]*)\s", top, re.M))
    return frozenset(w for w in words if usage_prog(help_text(tool, w)) == prog
                     and re.search(rf"usage: {re.escape(prog)} {re.escape(w)}\b", help_text(tool, w)))


@lru_cache(maxsize=None)
def script_flags(path: str) -> frozenset[str]:
    """A benchmark script's flags, read from its add_argument calls (its --help would import torch)."""
    import ast

    flags = {"-h", "--help"}
    for node in ast.walk(ast.parse((REPO / path).read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags.update(arg.value for arg in node.args
                         if isinstance(arg, ast.Constant) and str(arg.value).startswith("-"))
    return frozenset(flags)


def tool_flags(tool: str, sub: str | None) -> set[str]:
    return help_flags(help_text(tool, sub)) if tool in TOOLS else set(script_flags(tool))


def all_flags(tool: str) -> set[str]:
    flags = tool_flags(tool, None)
    for sub in subcommands(tool):
        flags |= tool_flags(tool, sub)
    return flags


def command_lines(block: str) -> list[list[str]]:
    """Each line of a bash block (continuations joined) as shell words, comments dropped."""
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            lines.append(shlex.split(line, comments=True))
    return lines


def invocations(words: list[str]) -> list[tuple[str, str | None, list[str]]]:
    """(tool, subcommand word or None, the flags passed to it) for each of our tools in one command line."""
    found = []
    for i, word in enumerate(words):
        if Path(word).name in ("train.py", "generate.py") and not word.startswith("-"):
            tool = Path(word).name
        elif word == "data_prep" or (word == "progan.metrics" and (i == 0 or words[i - 1] == "-m")):
            tool = word
        elif re.fullmatch(r"(\./)?bench/\w+\.py", word):
            tool = word.removeprefix("./")
        else:
            continue
        rest = []
        for arg in words[i + 1:]:
            if arg in SEPARATORS:
                break
            rest.append(arg.rstrip(";"))
            if arg.endswith(";"):
                break
        sub = rest[0] if rest and not rest[0].startswith("-") and tool in TOOLS else None
        flags = [a.split("=")[0] for a in rest if re.match(r"--?[A-Za-z]", a)]
        found.append((tool, sub, flags))
    return found


def unknown_flags(tool: str, sub: str | None, flags: list[str]) -> list[str]:
    """The flags a command line passes that its parser does not have ([] when all exist)."""
    if tool in TOOLS:
        subs = subcommands(tool)
        if sub in subs:
            known = tool_flags(tool, sub)
        elif sub is not None and sub.isupper():  # a placeholder: `python -m data_prep COMMAND --help`
            known = all_flags(tool)
        elif sub is None:
            known = tool_flags(tool, None)
        elif TOOLS[tool][1]:  # a positional, e.g. generate.py's CHECKPOINT: the parser that takes it
            known = tool_flags(tool, POSITIONAL)
        else:
            return [f"{sub} (not a subcommand of {tool}: {sorted(subs)})"]
    else:
        if not (REPO / tool).is_file():
            return [f"{tool} (no such file)"]
        if not flags:
            return []
        known = tool_flags(tool, None)
    assert "--help" in known, f"could not read the parser of {tool} {sub or ''}"
    return [f for f in flags if f not in known]


def page_invocations(page: Path) -> tuple[list, list]:
    """(invocations in ```bash blocks, invocations in inline code spans) of a page."""
    text = page.read_text()
    blocks = [inv for block in code_blocks(text, "bash") for words in command_lines(block)
              for inv in invocations(words)]
    spans = []
    for span in inline_spans(text):
        try:
            spans += invocations(shlex.split(span))
        except ValueError:  # not shell words (an unbalanced quote in prose code)
            continue
    return blocks, spans


@pytest.fixture(scope="module")
def parsers_read():
    """Read every parser the pages use at once, in parallel (each --help is a process start)."""
    wanted = {(tool, None) for page in PAGES for invs in page_invocations(page) for tool, _, _ in invs
              if tool in TOOLS}
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda key: help_text(*key), wanted))
        list(pool.map(subcommands, [tool for tool, _ in wanted]))


# -- names of modules and files --------------------------------------------------------------
DOTTED = re.compile(r"(?<![\w./-])progan(?:\.[A-Za-z_]\w*)+")
REPO_PATH = re.compile(r"(?<![\w./-])(?:progan|bench|scripts|tests|data_prep)/(?:[\w.-]+/)*(?:[\w-]+\.\w+)?")


def dotted_names() -> list[str]:
    names = set()
    for page in PAGES:
        text = page.read_text()
        names.update(DOTTED.findall(text))
        for block in code_blocks(text, "python"):
            for module, imported in re.findall(r"^from (progan[\w.]*) import ([\w, ]+)$", block, re.M):
                names.update(f"{module}.{name.strip()}" for name in imported.split(","))
    return sorted(names)


def repo_paths() -> list[str]:
    return sorted({p.rstrip(".") for page in PAGES for p in REPO_PATH.findall(page.read_text())})


def resolve(dotted: str):
    """The module or attribute a dotted name names; raises if there is none."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name and (name == error.name or name.startswith(error.name + ".")):
                continue  # `name` is not a module: try its parent, then attributes
            raise
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                raise LookupError(f"{dotted}: {getattr(obj, '__name__', obj)!s} has no {attr!r}")
            obj = getattr(obj, attr)
        return obj
    raise LookupError(f"{dotted}: no such module")


# -- tests ---------------------------------------------------------------------------------
def test_the_pages_are_there_and_the_checks_find_what_they_check():
    names = {p.name for p in PAGES[1:]}
    assert {"README.md", "datasets.md", "training.md", "sampling.md", "metrics.md", "reliability.md", "gpus.md",
            "class-labels.md", "non-square.md"} <= names
    assert sum(len(relative_links(p.read_text())) for p in PAGES) > 40
    assert sum(len(page_invocations(p)[0]) for p in PAGES) > 40
    assert len(dotted_names()) > 10 and len(repo_paths()) > 30 and len(code_map_rows()) > 5


def test_the_helpers_catch_what_they_are_for(tmp_path):
    assert github_slug("Micro-batches keep D's statistic") == "micro-batches-keep-ds-statistic"
    assert github_slug("Training: `train.py`") == "training-trainpy"
    assert github_slug("Where this differs from the paper's code") == "where-this-differs-from-the-papers-code"
    page = tmp_path / "page.md"
    page.write_text("# A page\n## Exit codes\n## Exit codes\n[ok](#exit-codes-1) [bad](#exit-code) [gone](nowhere.md)\n"
                    "```bash\n[no](#in-code)\n```\n")
    assert anchors(page) == {"a-page", "exit-codes", "exit-codes-1"}
    assert broken_links(page) == [f"#exit-code: no heading #exit-code in {shown(page)}",
                                  f"nowhere.md: no such file {shown(tmp_path / 'nowhere.md')}"]
    [words] = command_lines("accelerate launch --num_processes 2 train.py --data x \\\n  --no-such-flag 1  # --out y")
    assert invocations(words) == [("train.py", None, ["--data", "--no-such-flag"])]
    assert invocations(shlex.split("python -m data_prep build a b --max-res 8; echo --x")) == \
        [("data_prep", "build", ["--max-res"])]
    with pytest.raises(LookupError, match="progan.no_such_module"):
        resolve("progan.no_such_module")
    with pytest.raises(LookupError, match="has no 'NoSuchName'"):
        resolve("progan.nets.config.NoSuchName")
    assert resolve("progan.ModelConfig") is resolve("progan.nets.config.ModelConfig")


def test_the_flag_check_reads_real_parsers(parsers_read):
    assert unknown_flags("train.py", None, ["--data", "--no-such-flag"]) == ["--no-such-flag"]
    assert unknown_flags("data_prep", "build", ["--max-res", "--res"]) == ["--res"]  # --res is preview's
    assert unknown_flags("data_prep", "preview", ["--res"]) == []
    assert unknown_flags("data_prep", "nosuch", [])[0].startswith("nosuch (not a subcommand")
    assert {"export", "info", "timelapse"} <= subcommands("generate.py")
    assert unknown_flags("generate.py", "export", ["--resolution", "--grid"]) == ["--grid"]
    assert unknown_flags("generate.py", "checkpoints/RUN", ["--grid", "--size"]) == ["--size"]  # --size is timelapse's
    if "sample" in subcommands("generate.py"):  # the default subcommand, when generate.py has subparsers
        assert unknown_flags("generate.py", "sample", ["--grid", "--size"]) == ["--size"]
    assert unknown_flags("progan.metrics", "swd", ["--real", "--fake", "--real-images"]) == ["--real-images"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_flag_a_command_passes_exists(page, parsers_read):
    blocks, spans = page_invocations(page)
    wrong = [f"{tool} {sub or ''}: {bad}" for tool, sub, flags in blocks + spans
             for bad in unknown_flags(tool, sub, flags)]
    assert wrong == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_flag_named_in_prose_exists_somewhere(page, parsers_read):
    """`--flag` in running text: a flag of one of our commands, of the benchmark named last before
    it in its paragraph, or of accelerate, torchrun or SLURM."""
    ours = set(EXTERNAL_FLAGS)
    for tool in TOOLS:
        ours |= all_flags(tool)
    wrong = []
    for paragraph in re.split(r"\n\s*\n", prose(page.read_text())):
        for span in re.finditer(r"`([^`]+)`", paragraph):
            flags = [f for f in re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", span.group(1)) if f not in ours]
            scripts = re.findall(r"(?<![\w/])bench/\w+\.py", paragraph[:span.end()]) if flags else []
            known = tool_flags(scripts[-1], None) if scripts else set()
            wrong += [flag for flag in flags if flag not in known]
    assert wrong == []


@pytest.mark.parametrize("name", dotted_names())
def test_every_module_and_name_the_docs_give_exists(name):
    resolve(name)


@pytest.mark.parametrize("path", repo_paths())
def test_every_file_the_docs_name_exists(path):
    assert (REPO / path).exists(), path


def code_map_rows() -> list[tuple[list[str], list[str]]]:
    """(modules, names) of each table row whose first cell names progan/*.py files: the names
    (CamelCase or with an underscore, in backticks) the row's second cell says those modules hold."""
    rows = []
    for page in PAGES:
        for line in prose(page.read_text()).splitlines():
            cells = line.split("|")
            if not line.startswith("|") or len(cells) < 4:
                continue
            files = re.findall(r"`(progan/[\w/]+)\.py`", cells[1])
            names = [n for n in re.findall(r"`([A-Za-z_]\w*)`", cells[2])
                     if "_" in n or re.match(r"[A-Z].*[a-z]", n)]
            if files and names:
                rows.append(([f.replace("/", ".") for f in files], names))
    return rows


@pytest.mark.parametrize("modules, names", code_map_rows(), ids=lambda v: ",".join(v))
def test_the_code_map_names_what_its_modules_hold(modules, names):
    """`progan/generator/loading.py` ... | `load_generator` ...: each name lives in one of the row's modules."""
    loaded = [importlib.import_module(m) for m in modules]
    assert [n for n in names if not any(hasattr(m, n) for m in loaded)] == []


def test_the_front_page_is_short_and_opens_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) < FRONT_PAGE_MAX_LINES
    first_block = FENCE.search(text)
    assert first_block.group(1) == "bash" and text[:first_block.start()].strip() == "# progan"
    commands = [line.split("#")[0].strip() for line in first_block.group(2).splitlines()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert (REPO / "scripts" / "demo.sh").is_file() and (REPO / "scripts" / "test.sh").is_file()


def test_the_exit_code_table_is_the_codes():
    """The README's one table lists every EXIT_* code of progan.runtime.errors (Ctrl-C's 130 and
    SIGTERM's 143 among them) and 1 (a bug), and nothing else."""
    from progan.runtime import errors

    section = re.search(r"^## Exit codes\n(.*?)(?=^## )", README.read_text(), re.M | re.S)
    assert section, "README.md has no '## Exit codes' section"
    rows = {int(code) for code in re.findall(r"^\| (\d+) \|", section.group(1), re.M)}
    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    assert codes >= {0, 2, 3, 4, 5, 6, 130, 143}
    assert rows == codes | {1}


def test_the_manual_index_links_every_page():
    index = REPO / "docs" / "README.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for t in relative_links(index.read_text())}
    assert {p.resolve() for p in PAGES[1:] if p != index} <= linked
    readme_links = {(REPO / t.partition("#")[0]).resolve() for t in relative_links(README.read_text())}
    assert index.resolve() in readme_links
