"""The documentation a newcomer reads: every relative link resolves (file and heading), and every `byol …` command
the README shows parses with the real parser, its config overrides included."""

import re
import shlex
from pathlib import Path

import pytest

from byol.cli import build_parser
from byol.commands.common import build_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "DEVELOPERS.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {anchor(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, re.M)}


def links(page: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(FENCE.sub("", page.read_text()))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves_to_a_file_and_heading(page):
    checked = 0
    for target in links(page):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if fragment and resolved.suffix == ".md":
            assert fragment in anchors(resolved), f"{page.name}: no heading #{fragment} in {resolved.name}"
        checked += 1
    assert checked or page.name != "README.md"


def test_the_link_checker_finds_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [bad](missing.md) [gone](#nowhere)\n```bash\n[x](inside-code.md)\n```\n")
    assert links(page) == ["#title", "missing.md", "#nowhere"]
    assert (
        anchors(page) == {"title"} and anchor("The demo on each kind of machine") == "the-demo-on-each-kind-of-machine"
    )


def readme_commands() -> list[list[str]]:
    """Each `byol …` line of the README's shell blocks as argv (comments dropped, continuations joined)."""
    commands = []
    for language, body in FENCE.findall((ROOT / "README.md").read_text()):
        if language not in ("bash", "sh", "shell"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for start in [i for i, w in enumerate(words) if w == "byol"]:
                command = words[start + 1 :]
                cut = next((i for i, w in enumerate(command) if w in ("&&", "||", "|", ";")), len(command))
                commands.append(command[:cut])
    return commands


def test_the_readme_shows_commands():
    assert len(readme_commands()) >= 10


@pytest.mark.parametrize("argv", readme_commands(), ids=" ".join)
def test_every_command_the_readme_shows_parses(argv):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # argparse exits with status 2 on a bad flag or value
    assert callable(args.handler)
    if getattr(args, "accepts_overrides", False):
        if hasattr(args, "default_preset") and not getattr(args, "resume", False):
            build_config(args, extra)  # every --section.key exists and its value is valid for the preset
    else:
        assert not extra, f"unrecognized arguments: {extra}"
