"""README_zh.md stays in step with README.md: the same `##` sections in the same order, and in each section
the same shell commands and `--flags` in its code blocks. A command or flag in one and not the other fails
with its name (README "Contributing": both change in the same commit)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")
# a command: a script of ours or a tool run at the start of a line (after `$ `, `VAR=value` assignments, `sh`)
COMMAND = re.compile(r"^(?:\$ )?(?:[A-Z_]+=\S+ )*((?:sh|bash|python3?|\.venv/bin/python) (?:-m )?[\w./-]+|"
                     r"vllm serve|curl|pip install|git clone|apt-get install)", re.M)


def sections(path: Path) -> list[tuple[str, str]]:
    """(heading, body) of each `## ` section, in order; the text before the first one is left out."""
    parts = re.split(r"^## (.+)$", path.read_text(encoding="utf-8"), flags=re.M)
    return list(zip(parts[1::2], parts[2::2], strict=True))


def commands_and_flags(body: str) -> tuple[set[str], set[str]]:
    code = "\n".join(FENCE.findall(body))
    return set(COMMAND.findall(code)), set(FLAG.findall(code))


def test_both_readmes_link_to_each_other():
    en, zh = (ROOT / "README.md").read_text(encoding="utf-8"), (ROOT / "README_zh.md").read_text(encoding="utf-8")
    assert "README_zh.md" in en.split("\n## ", 1)[0], "README.md must link to README_zh.md at the top"
    assert "README.md" in zh.split("\n## ", 1)[0], "README_zh.md must link to README.md at the top"


def test_same_sections_commands_and_flags():
    en, zh = sections(ROOT / "README.md"), sections(ROOT / "README_zh.md")
    assert len(en) == len(zh), (f"README.md has {len(en)} `##` sections, README_zh.md {len(zh)}: "
                                f"{[h for h, _ in en]} vs {[h for h, _ in zh]}")
    problems = []
    for (en_title, en_body), (zh_title, zh_body) in zip(en, zh, strict=True):
        (en_cmds, en_flags), (zh_cmds, zh_flags) = commands_and_flags(en_body), commands_and_flags(zh_body)
        for name in sorted(en_cmds - zh_cmds) + sorted(en_flags - zh_flags):
            problems.append(f"{name!r} is in README.md section '{en_title}' but not in README_zh.md '{zh_title}'")
        for name in sorted(zh_cmds - en_cmds) + sorted(zh_flags - en_flags):
            problems.append(f"{name!r} is in README_zh.md section '{zh_title}' but not in README.md '{en_title}'")
    assert not problems, "\n".join(problems)


def test_the_check_sees_commands_and_flags():
    """The extraction itself: it must find what the READMEs hold, or the sync test would pass on nothing."""
    cmds, flags = commands_and_flags("```sh\nsh demo.sh\n$ python eval.py --benchmark pope --data x\n"
                                     "DEEPSPEED=configs/zero2.json sh train.sh\n"
                                     "python -m model.export a b --format llava\n```")
    assert cmds == {"sh demo.sh", "python eval.py", "sh train.sh", "python -m model.export"}
    assert flags == {"--benchmark", "--data", "--format"}
    en_cmds = set().union(*(commands_and_flags(body)[0] for _, body in sections(ROOT / "README.md")))
    assert {"sh demo.sh", "sh run_tests.sh", "sh train.sh", "python eval.py", "python test.py"} <= en_cmds
