"""``lightning-green --help``, ``COMMAND --help`` and ``--version``: written for people, true to the
config tree, and answered without importing Lightning, torch, Hydra or Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from test_cli import cli

from lightning_green import cli as lg_cli
from lightning_green.cli import COMMANDS, CONF_DIR, main

#: What each command's help must explain: its main keys, as a user types them.
MAIN_KEYS = {
    "train": ["model=", "data=", "trainer.max_epochs=", "energy.backend=", "-m, --multirun", "--cfg job"],
    "profile": ["model=", "profiler.mode=", "profiler.warmup_steps=", "--cfg job"],
    "tune": ["tune/strategy=", "tune/space=", "tune.num_samples=", "tune.target_accuracy=", "--cfg job"],
    "compare": ["compare.strategies=", "compare.seeds=", "tune.num_samples=", "--cfg job"],
    "report": ["PATH", "--out DIR"],
    "carbon": ["QUERY", "energy.carbon_intensity"],
}

#: The config each Hydra command composes.
CONFIG_NAMES = {"train": "config", "profile": "profile", "tune": "tune", "compare": "compare"}

#: Importing any of these takes from a tenth of a second (Hydra) to seconds (Lightning, torch).
HEAVY = ("lightning", "torch", "hydra", "omegaconf", "ray", "pandas", "matplotlib")


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]):
    assert _help(capsys, "--version").strip() == f"lightning-green {version('lightning-green')}"
    r = cli("-V", cwd=Path.cwd())
    assert r.returncode == 0 and r.stdout.split() == ["lightning-green", version("lightning-green")]


def test_top_level_help_lists_every_command_and_strategy(capsys: pytest.CaptureFixture[str]):
    text = _help(capsys, "--help")
    assert text == _help(capsys)  # no command: the same help
    for name in COMMANDS:
        assert f"\n  {name} " in text, name
    for strategy in (CONF_DIR / "tune" / "strategy").glob("*.yaml"):
        assert strategy.stem in text, strategy.stem  # efficient included


def test_dispatcher_commands_are_the_documented_ones():
    assert set(MAIN_KEYS) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(MAIN_KEYS))
def test_command_help_explains_its_main_keys(command: str, capsys: pytest.CaptureFixture[str]):
    text = _help(capsys, command, "--help")
    assert _help(capsys, command, "-h") == text
    for key in MAIN_KEYS[command]:
        assert key in text, f"{command} --help does not mention {key}"
    assert "example" in text.lower()
    # Hydra's own help (a ~200-line config dump) is not what answers.
    assert "_schema" not in text and "== Config ==" not in text
    if COMMANDS[command].usage:  # written here; carbon's comes from its own parser
        assert max(len(line) for line in text.splitlines()) <= lg_cli.WIDTH, command


def test_help_after_overrides_is_still_help(capsys: pytest.CaptureFixture[str]):
    assert _help(capsys, "train", "model=transformer", "--help") == _help(capsys, "train", "--help")


def test_every_strategy_is_explained_for_tune_and_compare(capsys: pytest.CaptureFixture[str]):
    tune, compare = _help(capsys, "tune", "--help"), _help(capsys, "compare", "--help")
    for strategy in (CONF_DIR / "tune" / "strategy").glob("*.yaml"):
        assert strategy.stem in tune and strategy.stem in compare, strategy.stem


def _as_override(value: object) -> str:
    """A config value as a user writes it on the command line (null, true, [0,1,2])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_as_override(v) for v in value) + "]"
    return str(value)


@pytest.mark.parametrize("command", sorted(CONFIG_NAMES))
def test_defaults_in_help_are_the_config_trees(command: str):
    """Every default the help states is what Hydra composes: the help cannot drift from the tree."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import lightning_green.config  # noqa: F401  (registers the schemas the tree extends)

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(CONFIG_NAMES[command], return_hydra_config=True)
    choices = cfg.hydra.runtime.choices
    checked = 0
    for key in COMMANDS[command].keys:
        name = key.name.lstrip("+")
        if key.default is None or name.startswith(("-", "hydra")):
            continue
        if "/" in name or (CONF_DIR / name).is_dir():  # a config group: the chosen file
            assert choices[name] == key.default, f"{command}: {name}"
        else:
            value = OmegaConf.to_container(cfg, resolve=False)
            for part in name.split("."):
                value = value[part]
            assert _as_override(value) == key.default, f"{command}: {name}"
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--version"], ["bogus"], *([c, "--help"] for c in sorted(COMMANDS)), ["carbon", "DE"]],
    ids=lambda argv: " ".join(argv),
)
def test_help_and_carbon_import_no_framework(argv: list[str]):
    """Help, --version and carbon answer in a blink because nothing heavy is imported on the way."""
    code = (
        "import contextlib, io, json, sys\n"
        "from lightning_green.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        f"    rc = main({argv!r})\n"
        f"print(json.dumps([rc, sorted(m for m in {HEAVY!r} if m in sys.modules)]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rc, imported = json.loads(r.stdout)
    assert rc == (2 if argv == ["bogus"] else 0)
    assert imported == [], f"lightning-green {' '.join(argv)} imported {imported}"


@pytest.mark.slow
def test_hydras_config_dump_is_still_reachable(tmp_path: Path):
    r = cli("train", "--cfg", "job", "model.conv_layers=3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "conv_layers: 3" in r.stdout and "max_epochs: 20" in r.stdout
    assert not list(tmp_path.iterdir())  # a dump, not a run
