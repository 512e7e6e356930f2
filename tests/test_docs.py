"""The documentation: the site builds with warnings as errors, and every example runs as written.

Every ```python and ```bash block of README.md and docs/**/*.md runs in a fresh temporary folder:
Python in a fresh process, shell with `bash -euo pipefail`. A Python example runs in a child forked
from a process that has imported torch, Lightning and lightning_green once (tests/helpers/zygote.py:
an import of Lightning costs about 5 s of CPU here, twenty times over), as its own `__main__`. A block that starts Ray runs in a
private network and PID namespace (loopback only; `ray stop` there sees only its own Ray, and
whatever it leaves ends with the namespace). A block that cannot run here says why in an HTML
comment just before it, `<!-- skip: needs a SLURM cluster -->`.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Queue

import pytest
from conftest import in_loopback_namespaces, netns_available
from helpers.zygote import Zygote

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
RUNNABLE = ("python", "bash")
SKIP = re.compile(r"^<!--\s*skip:\s*(?P<why>.+?)\s*-->$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
USES_RAY = re.compile(r"^\s*ray\s|lightning-green\s+(tune|compare)\b|import ray\b|ray\.init", re.M)
#: Blocks that may not run in the suite (SLURM, a GPU, several machines, installs): keep them few.
MAX_SKIPPED = 12


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    skip: str | None

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """Every top-level fenced block of a Markdown page (a fence closes only on its own kind and
    at least its length, so an example of Markdown inside ```` fences is one block)."""
    out: list[Block] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, start = m.group("fence"), i
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        i += 1
        body = []
        while i < len(lines) and not closing.match(lines[i]):
            body.append(lines[i])
            i += 1
        i += 1
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        skip = SKIP.match(before)
        indent = len(m.group("indent"))
        code = "\n".join(line[indent:] for line in body) + "\n"
        out.append(Block(page, start + 1, m.group("lang").lower(), code, skip.group("why") if skip else None))
    return out


BLOCKS = [b for page in PAGES for b in code_blocks(page)]
EXAMPLES = [b for b in BLOCKS if b.lang in RUNNABLE]


# ------------------------------------------------------------------ fast checks of the pages


def test_the_readme_is_a_front_page_that_says_the_test_command():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "make test" in text and "pip install lightning-green" in text


def test_the_readmes_relative_links_exist():
    text = (REPO / "README.md").read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#", target):
            continue
        assert (REPO / target.split("#")[0]).exists(), f"README.md links to a missing {target}"


def test_examples_are_found_and_few_are_skipped():
    assert len(EXAMPLES) >= 20
    skipped = [b.name for b in EXAMPLES if b.skip]
    assert len(skipped) <= MAX_SKIPPED, skipped


@pytest.mark.parametrize("block", [b for b in EXAMPLES if b.lang == "python"], ids=lambda b: b.name)
def test_every_trainer_in_an_example_sets_max_epochs(block: Block):
    for node in ast.walk(ast.parse(block.code)):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", "")) == "Trainer"
        ):
            keys = {k.arg for k in node.keywords}
            assert "max_epochs" in keys, f"{block.name}: Trainer() without max_epochs trains 1000 epochs"


@pytest.mark.parametrize(
    "block", [b for b in EXAMPLES if b.lang == "bash" and not b.skip], ids=lambda b: b.name
)
def test_shell_examples_that_train_say_their_size(block: Block):
    # One command may continue over several lines.
    for command in block.code.replace("\\\n", " ").splitlines():
        if re.search(r"lightning-green\s+train\b", command):
            assert "trainer.max_epochs=" in command, f"{block.name}: {command.strip()}"
        if re.search(r"lightning-green\s+(tune|compare)\b", command):
            assert "tune.num_samples=" in command and "trainer.max_epochs=" in command, command.strip()
        if re.search(r"\bpython\b.*\bfit\b", command):
            assert "--trainer.max_epochs=" in command, f"{block.name}: {command.strip()}"


# ------------------------------------------------------------------ the site and the examples


def _env() -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "MPLBACKEND": "Agg"}
    env.pop("RAY_ADDRESS", None)
    env["NO_MKDOCS_2_WARNING"] = "1"
    return env


@pytest.mark.slow
def test_the_site_builds_with_warnings_as_errors(tmp_path: Path):
    site = tmp_path / "site"
    r = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    for page in ("index.html", "getting-started/index.html", "reference/callbacks/index.html",
                 "benchmarks/index.html", "troubleshooting/index.html"):  # fmt: skip
        assert (site / page).is_file(), page
    reference = (site / "reference" / "callbacks" / "index.html").read_text()
    assert 'id="lightning_green.EnergyMonitor"' in reference and "energy/train_epoch_j" in reference


@dataclass(frozen=True)
class Outcome:
    ok: bool
    skip: str | None = None
    report: str = ""


def run_block(block: Block, folder: Path, zygotes: Queue[Zygote] | None = None) -> Outcome:
    """Run one example as written in ``folder``: what happened, and its output if it failed.
    A Python example that does not start Ray runs in a child of one of ``zygotes`` where given."""
    env = _env()
    if block.lang == "python" and zygotes is not None and not USES_RAY.search(block.code):
        script = folder / "example.py"
        script.write_text(block.code)
        zygote = zygotes.get()
        try:
            r = zygote.run(script, folder, env, EXAMPLE_TIMEOUT_S)
        except subprocess.TimeoutExpired as err:
            return Outcome(
                False,
                report=f"{block.name} ran past {EXAMPLE_TIMEOUT_S} s:\n{block.code}\n{err.stdout!r:.3000}",
            )
        finally:
            zygotes.put(zygote)
        return _outcome(block, r)
    if block.lang == "python":
        script = folder / "example.py"
        args = [sys.executable, str(script)]
    else:
        script = folder / "example.sh"
        args = ["bash", "-euo", "pipefail", str(script)]
    script.write_text(block.code)
    if USES_RAY.search(block.code):
        if not netns_available():
            if os.environ.get("CI"):
                return Outcome(
                    False, report="CI needs `unshare -n -p` (root) to keep the example's Ray on loopback"
                )
            return Outcome(False, skip="needs `unshare -n -p` (root) to keep Ray on loopback and to itself")
        # Ray's files in a folder of this example's own (short: Ray's socket paths are limited).
        env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rd", dir="/tmp")
        args = in_loopback_namespaces(args)
    try:
        r = subprocess.run(
            args, cwd=folder, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S, env=env
        )
    except subprocess.TimeoutExpired as err:
        return Outcome(
            False, report=f"{block.name} ran past {EXAMPLE_TIMEOUT_S} s:\n{block.code}\n{err.stdout!r:.3000}"
        )
    finally:
        if "RAY_TMPDIR" in env:
            shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    return _outcome(block, r)


def _outcome(block: Block, r: subprocess.CompletedProcess) -> Outcome:
    return Outcome(
        r.returncode == 0,
        report=f"{block.name} failed ({r.returncode}):\n{block.code}\n--- stdout ---\n{r.stdout[-3000:]}"
        f"\n--- stderr ---\n{r.stderr[-5000:]}",
    )


EXAMPLE_TIMEOUT_S = 600
#: Examples run two at a time: those that start Ray mostly wait for it, and go first.
WORKERS = 2


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The outcome of each selected example, run in the background as the module starts; an
    example whose text is the same as an earlier one's (README's and a guide's) runs once."""
    selected = [
        item.callspec.params["block"]
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_example_runs_as_written" and hasattr(item, "callspec")
    ]
    runnable = [b for b in selected if not b.skip]
    first: dict[str, Block] = {}
    for b in sorted(runnable, key=lambda b: not USES_RAY.search(b.code)):
        first.setdefault(b.code, b)
    zygotes: Queue[Zygote] = Queue()
    for _ in range(WORKERS):
        zygotes.put(Zygote(_env()))
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = {
            code: pool.submit(run_block, b, tmp_path_factory.mktemp("example"), zygotes)
            for code, b in first.items()
        }
        yield futures
        for f in futures.values():
            f.cancel()
    while not zygotes.empty():
        zygotes.get().close()


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.xdist_group("doc_examples")  # one worker runs them all: they share one pool of outcomes
@pytest.mark.parametrize("block", EXAMPLES, ids=lambda b: b.name)
def test_example_runs_as_written(block: Block, outcomes: dict[str, Future[Outcome]]):
    if block.skip:
        pytest.skip(block.skip)
    outcome = outcomes[block.code].result()
    if outcome.skip:
        pytest.skip(outcome.skip)
    assert outcome.ok, outcome.report
