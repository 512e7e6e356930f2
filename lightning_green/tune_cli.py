"""``lightning-green tune`` and ``lightning-green compare`` (Hydra entry points): run studies through
:mod:`lightning_green.tune` (Ray), then write and print their reports through
:mod:`lightning_green.report.studies` (files only)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from lightning_green.config import CONF_DIR, check_output_dir, friendly_errors


def _print_study(out: Path) -> None:
    """A finished study on the console (100 columns): its trials, best accuracy, tuning energy,
    and its best configuration by the strategy's objective; then where its files are."""
    from lightning_green.report.studies import study_console

    print(study_console(out, rows=0), f"Results in {out}", sep="\n", flush=True)


def _interrupted(what: str, out: Path) -> None:
    """Say that Ctrl-C cut a study and how to finish it; exit 130 (as a shell does for SIGINT)."""
    print(
        f"lightning-green: interrupted (Ctrl-C): {what} did not run to its end; its results so far are "
        f"in {out}, marked interrupted. Finish it with the same command plus tune.resume=true "
        f"hydra.run.dir={out}",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(130)


@hydra.main(config_path=str(CONF_DIR), config_name="tune", version_base="1.3")
@friendly_errors
def tune_main(cfg: DictConfig) -> None:
    from lightning_green.report.studies import write_pareto
    from lightning_green.tune.study import check_resumable, prepare, run_study

    prepare(cfg)  # bad input fails here, before Ray starts
    check_output_dir(cfg.output_dir)
    check_resumable(cfg, Path(cfg.output_dir))
    out = run_study(cfg, Path(cfg.output_dir))
    write_pareto(out)
    _print_study(out)
    from lightning_green.records import STUDY_FILE, read_json

    if read_json(out / STUDY_FILE).get("interrupted"):
        _interrupted("the study", out)


def _check_compare(c: DictConfig) -> None:
    """Refuse a bad ``compare.*`` key (naming it) before anything runs."""
    from lightning_green._checks import check_number
    from lightning_green.config import ConfigError
    from lightning_green.tune.strategies import STRATEGIES

    unknown = [s for s in c.strategies if s not in STRATEGIES]
    if unknown or not c.strategies:
        raise ConfigError(
            f"compare.strategies must be a non-empty list of {', '.join(STRATEGIES)}; got {list(c.strategies)}"
        )
    if isinstance(c.target_fraction, bool) or not 0 < c.target_fraction <= 1:
        raise ConfigError(f"compare.target_fraction must be a number in (0, 1]; got {c.target_fraction}")
    seeds = list(c.seeds or [])
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ConfigError(f"compare.seeds must be a non-empty list of integers, e.g. [0,1,2]; got {seeds}")
    if c.reference_energy_j is not None:
        try:
            check_number(
                "compare.reference_energy_j", c.reference_energy_j, above=0.0, unit="joules, or null"
            )
        except ValueError as err:
            raise ConfigError(str(err)) from None


def _strategy_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """Each strategy's ``tune`` config, composed with the command's overrides and checked (every
    strategy's input is checked before any trial starts)."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    from lightning_green.tune.study import prepare

    overrides = [
        o for o in HydraConfig.get().overrides.task if not o.startswith(("tune/strategy=", "compare."))
    ]
    cfgs = {}
    for s in cfg.compare.strategies:
        sub = compose(config_name="tune", overrides=[*overrides, f"tune/strategy={s}"])
        sub.output_dir = cfg.output_dir
        prepare(sub)
        cfgs[s] = sub
    return cfgs


class _Comparison:
    """The studies of a comparison as they end: trials and ``study.json`` per strategy (in seed
    order), the ``<strategy> seed <k>`` not run, and the study a Ctrl-C cut (``cut``)."""

    def __init__(self) -> None:
        self.studies: dict[str, list[Any]] = {}
        self.metas: dict[str, list[dict[str, Any]]] = {}
        self.not_run: list[str] = []
        self.cut: str | None = None

    def run(
        self, cfgs: dict[str, DictConfig], seeds: list[int], out: Path, resume: bool, cluster: Any
    ) -> None:
        """Each strategy's study per seed, one after the other (a complete one kept on ``resume``);
        after a study a Ctrl-C cut, the rest are listed as not run."""
        from lightning_green.report.studies import read_study, write_pareto
        from lightning_green.tune.study import run_study

        for s, sub in cfgs.items():
            for seed in seeds:
                path = out / s / f"seed{seed}"
                if self.cut is not None:
                    self.not_run.append(f"{s} seed {seed}")
                    continue
                if resume and study_complete(path):
                    print(f"{s} seed {seed}: complete, kept as it is ({path})", flush=True)
                else:
                    self.cut = f"{s} seed {seed}"  # until it returns whole
                    path = run_study(sub, path, seed=int(seed), cluster=cluster)
                    write_pareto(path)
                meta, trials = read_study(path)
                self.cut = f"{s} seed {seed}" if meta.get("interrupted") else None
                if trials.empty:
                    self.not_run.append(f"{s} seed {seed} (no trial ended)")
                    continue
                self.studies.setdefault(s, []).append(trials)
                self.metas.setdefault(s, []).append(meta)
                _print_line(s, seed, meta, trials)

    def interrupted(self, strategies: list[str], seeds: list[int]) -> None:
        """A second Ctrl-C, or one outside a study: what ended is compared; the rest is listed."""
        done = {(m["strategy"]["name"], m["seed"]) for ms in self.metas.values() for m in ms}
        self.not_run = [
            f"{s} seed {seed}" for s in strategies for seed in seeds if (s, int(seed)) not in done
        ]
        self.cut = self.cut or "the comparison"


@hydra.main(config_path=str(CONF_DIR), config_name="compare", version_base="1.3")
@friendly_errors
def compare_main(cfg: DictConfig) -> None:
    from lightning_green.config import to_container
    from lightning_green.records import write_json_atomic
    from lightning_green.report.studies import compare_console, write_compare
    from lightning_green.tune.study import init_ray

    c = cfg.compare
    _check_compare(c)
    cfgs = _strategy_configs(cfg)
    cluster = init_ray(cfg.tune)
    out = Path(cfg.output_dir)
    target = cfg.tune.get("target_accuracy")
    write_json_atomic(out / "compare.json", {**to_container(c), "target_accuracy": target})
    comparison = _Comparison()
    try:
        comparison.run(cfgs, list(c.seeds), out, bool(cfg.tune.get("resume")), cluster)
    except KeyboardInterrupt:
        comparison.interrupted(list(cfgs), list(c.seeds))
    if comparison.studies:
        found = (comparison.studies, c.target_fraction, c.reference_energy_j, target, comparison.metas)
        paths = write_compare(found[0], out, *found[1:], comparison.not_run)
        print(compare_console(*found, comparison.not_run), flush=True)
        for p in paths:
            print(p)
    if comparison.cut is not None:
        _interrupted(f"compare ({comparison.cut})", out)


def study_complete(path: Path) -> bool:
    """Whether ``path`` holds a study that ran to its end (a resumed comparison keeps it)."""
    from lightning_green.records import STUDY_FILE, TRIALS_FILE, read_json

    if not (path / STUDY_FILE).is_file() or not (path / TRIALS_FILE).is_file():
        return False
    meta = read_json(path / STUDY_FILE)
    return meta.get("finished") is not None and not meta.get("interrupted")


def _print_line(strategy: str, seed: int, meta: dict, trials) -> None:
    """One line per finished study: trials, best accuracy, trial and whole-study energy."""
    from lightning_green.report.studies import study_metrics

    m = study_metrics(trials)
    whole = meta.get("study_energy_j")
    print(
        f"{strategy} seed {seed}: {m['trials']} trials, best accuracy {m['best_accuracy']:.4f}, trials "
        f"{m['total_energy_j']:.1f} J" + (f", whole study {whole:.1f} J" if whole is not None else ""),
        flush=True,
    )
