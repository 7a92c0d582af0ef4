"""The manual stays true (issue 44): the site builds in strict mode (no broken link or anchor, no
page outside the navigation), the configuration reference lists every key of the schema, the
README's links land on real pages and headings, and every command the docs show that runs on CPU
in seconds (`pipeline config|plan|models`, `--help`, `DRY_RUN=1` Slurm lines) exits 0. A command
that cannot run here ends with `# not run here` in the page source and is skipped."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

from pipeline.config.describe import describe
from tests.helpers import REPO, run_cli

pytest.importorskip("mkdocs")
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUNNABLE = re.compile(r"(^|\s)pipeline (config|plan|models)\b|--help|DRY_RUN=1")


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_the_site_builds_in_strict_mode_with_the_generated_reference(tmp_path):
    proc = _build(REPO / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = (tmp_path / "site" / "config-reference" / "index.html").read_text()
    keys = [item.key for item in describe()]
    assert len(keys) > 100 and all(f"<code>{key}</code>" in reference for key in keys)


def test_strict_mode_refuses_a_page_outside_the_nav_a_broken_anchor_and_a_broken_link(tmp_path):
    """The same configuration over a damaged copy of docs/: the build fails, naming each damage."""
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs, ignore=shutil.ignore_patterns("cpu-runs", "gpu-runs"))
    (docs / "benchmarks.md").write_text("# Benchmarks\n")  # its raw-output links point into the folders left out
    (docs / "orphan.md").write_text("# Orphan\n")
    index = docs / "index.md"
    index.write_text(index.read_text() + "\n[a](slurm.md#no-such-heading) [b](no-such-page.md)\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text((REPO / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
                      .replace("docs/hooks/", str(REPO / "docs" / "hooks") + "/"))
    proc = _build(config, tmp_path / "site")
    assert proc.returncode != 0, proc.stderr[-2000:]
    for message in ("orphan.md", "does not contain an anchor '#no-such-heading'", "no-such-page.md"):
        assert message in proc.stderr, (message, proc.stderr[-2000:])


def test_the_readmes_links_land_on_pages_and_headings():
    links = re.findall(r"\]\((docs/[^)#]+)(?:#([^)]+))?\)", (REPO / "README.md").read_text())
    assert len(links) > 15
    for path, anchor in links:
        page = REPO / path
        assert page.is_file(), path
        if anchor:
            headings = re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)
            assert anchor in {slugify(h, "-") for h in headings}, (path, anchor)
    assert len((REPO / "README.md").read_text().splitlines()) <= 150  # the front page stays short


def _shown_commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        in_code = False
        for line in page.read_text().splitlines():
            if line.startswith("```"):
                in_code = not in_code
                continue
            command = line.strip().removeprefix("$ ")
            if in_code and RUNNABLE.search(command) and not command.startswith("#"):
                if not command.endswith("# not run here"):
                    found.append((page.name, re.split(r"\s#", command)[0].strip()))
    return list(dict.fromkeys(found))  # a command shown twice on a page runs once


COMMANDS = _shown_commands()


def test_the_docs_show_runnable_commands():
    assert len(COMMANDS) >= 10 and {page for page, _ in COMMANDS} >= {"getting-started.md", "slurm.md", "recipes.md"}


@pytest.mark.parametrize("page, command", COMMANDS, ids=[f"{p}:{c[:60]}" for p, c in COMMANDS])
def test_a_command_shown_in_the_docs_exits_0(page, command):
    words = shlex.split(command)
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    if words[0] == "pipeline":
        proc = run_cli(*words[1:], quick=True)
    else:  # DRY_RUN=1 bash slurm/...: prints the sbatch line and the srun command, runs nothing
        proc = subprocess.run(words, capture_output=True, text=True, cwd=REPO, env={**os.environ, **env}, timeout=120)
    assert proc.returncode == 0, f"{page}: {command}\n{proc.stderr[-2000:]}"
