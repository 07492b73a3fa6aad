"""The documentation cannot drift from the code.

- docs/cli.md is exactly what docs/cli_reference.py renders from the real CLI;
- the README's command table names every top-level command;
- every relative link in README.md and docs/*.md reaches an existing file (and heading);
- the ACL printed in docs/security.md and the README's topic table are the ones the protocol
  generates.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import typer.main

from edgeloop.cli import app
from mosquitto.acl import node_rules, shared_rules
from protocol.topics import NODE_TOPICS, ROOT, Direction

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))


def load_cli_reference():
    spec = importlib.util.spec_from_file_location(
        "cli_reference", REPO / "docs" / "cli_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_up_to_date() -> None:
    reference = load_cli_reference()
    expected = reference.render(app)
    current = reference.CLI_MD.read_text() if reference.CLI_MD.exists() else ""
    if current != expected:
        diff = "".join(
            list(
                difflib.unified_diff(
                    current.splitlines(True),
                    expected.splitlines(True),
                    "docs/cli.md",
                    "rendered from the CLI",
                )
            )[:60]
        )
        pytest.fail(f"docs/cli.md is out of date; run {reference.REGENERATE}\n{diff}")


def every_command() -> list[tuple[str, object, typer.Context]]:
    """``(name, click command, context)`` for every command and group, found independently of
    docs/cli_reference.py."""
    found = []

    def walk(command, name: str, parent: typer.Context | None) -> None:
        ctx = typer.Context(command, info_name=name.split()[-1], parent=parent)
        found.append((name, command, ctx))
        if hasattr(command, "list_commands"):
            for sub in command.list_commands(ctx):
                walk(command.get_command(ctx, sub), f"{name} {sub}", ctx)

    walk(typer.main.get_command(app), "edgeloop", None)
    return found


def test_cli_reference_documents_every_command_and_option() -> None:
    """The renderer itself must not skip a command, an argument or an option."""
    text = load_cli_reference().render(app)
    sections = dict(re.findall(r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL))
    shared = sections.get("Broker options", "")
    for name, command, ctx in every_command()[1:]:
        assert name in sections, f"{name} missing from docs/cli.md"
        for param in command.get_params(ctx):
            if param.name == "help":
                continue
            words = param.opts if param.param_type_name == "option" else [param.name]
            here = all(w in sections[name] for w in words)
            assert here or all(w in shared for w in words), f"{name}: {words} not documented"


def test_readme_command_table_names_every_command() -> None:
    readme = README.read_text()
    root = typer.main.get_command(app)
    ctx = typer.Context(root, info_name="edgeloop")
    missing = [n for n in root.list_commands(ctx) if f"`edgeloop {n}" not in readme]
    assert not missing, f"README.md's CLI table lacks: {', '.join(missing)}"


# -- links -----------------------------------------------------------------------------------

FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(markdown: str) -> str:
    """The text outside code blocks and code spans, where links are links."""
    return INLINE_CODE.sub("", FENCE.sub("", markdown))


def links(markdown: str) -> list[str]:
    text = prose(markdown)
    return INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes, -N for repeats."""
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", markdown)):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def test_link_parsing_finds_links_and_anchors() -> None:
    sample = (
        '# Hello `world`, again\n\nSee [a](docs/a.md#x) and ![i](img.png "t").\n'
        "```\n[not](a/link.md)\n# not a heading\n```\nin code: `[no](code.md)`\n\n"
        "[r]: ref.md\n## Hello world again\n"
    )
    assert links(sample) == ["docs/a.md#x", "img.png", "ref.md"]
    assert anchors(sample) == {"hello-world-again", "hello-world-again-1"}


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_reach_existing_files(page: Path) -> None:
    text = page.read_text()
    broken = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:, file:
            continue
        path_part, _, fragment = target.partition("#")
        if not path_part:
            destination = page
        elif path_part.startswith("/"):  # GitHub reads /path from the repository's root
            destination = (REPO / path_part.lstrip("/")).resolve()
        else:
            destination = (page.parent / path_part).resolve()
        if not destination.exists():
            broken.append(f"{target} does not exist")
        elif (
            fragment
            and destination.suffix == ".md"
            and fragment not in anchors(destination.read_text())
        ):
            broken.append(f"{target}: no heading #{fragment} in {destination.name}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


# -- generated texts quoted in the docs ------------------------------------------------------


def test_security_doc_shows_the_generated_acl() -> None:
    text = (REPO / "docs" / "security.md").read_text()
    shown = re.findall(r"^pattern (?:read|write) \S+$", text, re.MULTILINE)
    generated = [f"pattern {access} {topic}" for access, topic in node_rules() + shared_rules()]
    assert shown == generated, "docs/security.md's ACL differs from mosquitto/acl.py's"


def test_readme_topic_table_matches_the_protocol() -> None:
    """Every node topic, with its direction and retained flag, as protocol/topics.py has it."""
    shown = {}
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith(f"`{ROOT}/node/"):
            shown[cells[0].strip("`")] = (cells[1], cells[2].startswith("yes"))
    expected = {
        f"{ROOT}/node/{{node}}/{t.path}": (
            "edge → cloud" if t.direction is Direction.UP else "cloud → edge",
            t.retained,
        )
        for t in NODE_TOPICS
    }
    assert shown == expected
