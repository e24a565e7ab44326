"""Every English page has a Chinese twin in step with it: README.md and README_zh.md, docs/X.md and docs/zh/X.md.
Twins have the same `##` sections in the same order, and in each section the same shell commands and `--flags`
in its code blocks. A page without its twin, or a command or flag in one and not the other, fails with its
name (README "Contributing": both change in the same commit)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")
# a command: a script of ours or a tool run at the start of a line (after `$ `, `VAR=value` assignments, `sh`)
COMMAND = re.compile(r"^(?:\$ )?(?:[A-Z_]+=\S+ )*((?:sh|bash|python3?|\.venv/bin/python) (?:-m )?[\w./-]+|"
                     r"vllm serve|curl|pip install|git clone|apt-get install)", re.M)
FRONT_PAGE_LIMIT = 12_000  # characters: the README is the front page, the manual lives in docs/


def twins() -> list[tuple[Path, Path]]:
    pairs = [(ROOT / "README.md", ROOT / "README_zh.md")]
    return pairs + [(page, ROOT / "docs" / "zh" / page.name) for page in sorted((ROOT / "docs").glob("*.md"))]


def sections(path: Path) -> list[tuple[str, str]]:
    """(heading, body) of each `## ` section, in order; the text before the first one is left out."""
    parts = re.split(r"^## (.+)$", path.read_text(encoding="utf-8"), flags=re.M)
    return list(zip(parts[1::2], parts[2::2], strict=True))


def commands_and_flags(body: str) -> tuple[set[str], set[str]]:
    code = "\n".join(FENCE.findall(body))
    return set(COMMAND.findall(code)), set(FLAG.findall(code))


def test_every_page_has_its_twin():
    english = {p.name for p in (ROOT / "docs").glob("*.md")}
    chinese = {p.name for p in (ROOT / "docs" / "zh").glob("*.md")}
    assert english == chinese, (f"only in docs/: {sorted(english - chinese)}; "
                                f"only in docs/zh/: {sorted(chinese - english)}")
    topics = {"data.md", "models.md", "training.md", "inference.md", "evaluation.md", "demo.md", "benchmarks.md"}
    assert topics <= english


def test_twins_link_to_each_other():
    en, zh = (ROOT / "README.md").read_text(encoding="utf-8"), (ROOT / "README_zh.md").read_text(encoding="utf-8")
    assert "README_zh.md" in en.split("\n## ", 1)[0], "README.md must link to README_zh.md at the top"
    assert "README.md" in zh.split("\n## ", 1)[0], "README_zh.md must link to README.md at the top"
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in en, f"README.md does not link to docs/{page.name}"
        assert f"docs/zh/{page.name}" in zh, f"README_zh.md does not link to docs/zh/{page.name}"


def test_the_front_page_is_a_front_page():
    for path in (ROOT / "README.md", ROOT / "README_zh.md"):
        size = len(path.read_text(encoding="utf-8"))
        assert size <= FRONT_PAGE_LIMIT, f"{path.name} has {size} characters; move detail into docs/"


def test_relative_links_point_at_files():
    problems = []
    for en, zh in twins():
        for page in (en, zh):
            for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
                if not (page.parent / target).exists():
                    problems.append(f"{page.relative_to(ROOT)} links to {target}, which does not exist")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("en,zh", twins(), ids=lambda p: str(p.relative_to(ROOT)))
def test_same_sections_commands_and_flags(en, zh):
    en_sections, zh_sections = sections(en), sections(zh)
    names = en.relative_to(ROOT), zh.relative_to(ROOT)
    assert len(en_sections) == len(zh_sections), (
        f"{names[0]} has {len(en_sections)} `##` sections, {names[1]} {len(zh_sections)}: "
        f"{[h for h, _ in en_sections]} vs {[h for h, _ in zh_sections]}")
    problems = []
    for (en_title, en_body), (zh_title, zh_body) in zip(en_sections, zh_sections, strict=True):
        (en_cmds, en_flags), (zh_cmds, zh_flags) = commands_and_flags(en_body), commands_and_flags(zh_body)
        for name in sorted(en_cmds - zh_cmds) + sorted(en_flags - zh_flags):
            problems.append(f"{name!r} is in {names[0]} section '{en_title}' but not in {names[1]} '{zh_title}'")
        for name in sorted(zh_cmds - en_cmds) + sorted(zh_flags - en_flags):
            problems.append(f"{name!r} is in {names[1]} section '{zh_title}' but not in {names[0]} '{en_title}'")
    assert not problems, "\n".join(problems)


def test_the_check_sees_commands_and_flags():
    """The extraction itself: it must find what the pages hold, or the sync test would pass on nothing."""
    cmds, flags = commands_and_flags("```sh\nsh demo.sh\n$ python eval.py --benchmark pope --data x\n"
                                     "DEEPSPEED=configs/zero2.json sh train.sh\n"
                                     "python -m model.export a b --format llava\n```")
    assert cmds == {"sh demo.sh", "python eval.py", "sh train.sh", "python -m model.export"}
    assert flags == {"--benchmark", "--data", "--format"}
    every = set()
    for en, _ in twins():
        every |= set().union(*(commands_and_flags(body)[0] for _, body in sections(en)))
    assert {"sh demo.sh", "sh run_tests.sh", "sh train.sh", "python eval.py", "python test.py"} <= every
