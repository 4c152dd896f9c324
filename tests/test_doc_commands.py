"""Every run command the docs print is a promise: each ``experiments.run`` command of the bash blocks of README.md,
docs/*.md and results/README.md is read from the file itself, expanded into the jobs it starts (its sweeps and its
experiment's own multirun, as Hydra's basic sweeper expands them), and each job is composed and validated with the
hub models and the data swapped for the tiny stand-ins and fixtures of the paper's dry run (tests/paper_dry_run.py),
its data files checked against their manifest. Running them is the dry run's part (``make paper-dry-run``)."""

from __future__ import annotations

import functools
import importlib.util
import itertools
import re
import shlex
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from pact.run.config import ConfigError, compose_config, validate
from tests.paper_dry_run import standins
from tests.realdata import pin_overrides

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")), "results/README.md")
ENTRY = "experiments.run"
PLACEHOLDER = "placeholder"   # a doc's <value to fill in>
MULTIRUN_FLAGS = ("-m", "--multirun")
FULL_PRODUCT = 12   # a sweep of more jobs is composed on a covering set (:func:`covering`)


def run_commands(text: str) -> list[str]:
    """The ``experiments.run`` commands of the bash blocks of a Markdown text, continuation lines joined and comments
    dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if not line.startswith("#") and f"-m {ENTRY}" in line:
                commands.append(line)
    return commands


def doc_commands() -> list[tuple[str, str]]:
    """(doc, command) for every run command of the docs."""
    return [(doc, c) for doc in DOCS for c in run_commands((ROOT / doc).read_text())]


def arguments(command: str) -> list[str]:
    """The arguments after ``-m experiments.run``, placeholders filled in."""
    words = shlex.split(command)
    start = next(i for i, w in enumerate(words) if w == ENTRY and words[i - 1] == "-m") + 1
    return [re.sub(r"<[^>]+>", PLACEHOLDER, w) for w in words[start:]]


def jobs(args: list[str]) -> list[list[str]]:
    """The override lists of the jobs a command starts: one (a run) or the product of its sweeps and, in a multirun,
    its experiment's ``hydra.sweeper.params`` (the command line's keys win, as in Hydra's basic sweeper). Hydra's own
    overrides (mode, launcher) are dropped: they choose how the jobs run, not what they are; a launcher must exist."""
    overrides = [a for a in args if a not in MULTIRUN_FLAGS]
    settings = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides if "=" in o}
    experiment = settings.get("experiment")
    params = {}
    mode = "MULTIRUN" if any(a in MULTIRUN_FLAGS for a in args) else "RUN"
    if experiment:
        conf = OmegaConf.load(ROOT / "conf" / "experiment" / f"{experiment}.yaml")
        mode = settings.get("hydra.mode", conf.get("hydra", {}).get("mode", mode))
        params = dict(conf.get("hydra", {}).get("sweeper", {}).get("params", {}) or {})
    launcher = settings.get("hydra/launcher")
    if launcher:  # ours (conf/hydra/launcher/) or an installed Hydra plugin's
        assert (ROOT / "conf" / "hydra" / "launcher" / f"{launcher}.yaml").is_file() or \
            importlib.util.find_spec(f"hydra_plugins.hydra_{launcher}_launcher"), f"no launcher {launcher}"
    overrides = [o for o in overrides if not o.startswith("hydra")]
    if mode == "MULTIRUN":
        keys = {o.split("=", 1)[0] for o in overrides}
        overrides += [f"{k}={v}" for k, v in params.items() if k not in keys]
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
               if mode == "MULTIRUN" and o.is_sweep_override() else [o.input_line] for o in parsed]
    return [list(job) for job in itertools.product(*choices)]


def covering(all_jobs: list[list[str]]) -> list[list[str]]:
    """The jobs a test composes: all of them up to :data:`FULL_PRODUCT` jobs, else a covering set in which every
    swept value appears (job i takes each key's value i modulo its count): composing one costs ~1 s, and the paper's
    whole table is run, not only composed, by its dry run."""
    if len(all_jobs) <= FULL_PRODUCT:
        return all_jobs
    columns = [list(dict.fromkeys(col)) for col in zip(*all_jobs)]
    return [[col[i % len(col)] for col in columns] for i in range(max(len(c) for c in columns))]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    out = tmp_path_factory.mktemp("doc_commands")
    return out, standins(out)


def stand_in_swaps(cfg, out: Path, paths: dict[str, Path]) -> list[str]:
    """The value overrides that swap a composed job's hub models and data for the stand-ins under ``out``."""
    swaps = [f"store_dir={out / 'store'}", f"runs_dir={out / 'runs'}"]
    if cfg.model.kind == "hub":
        swaps += [f"model.aligned={paths['aligned']}"] + ([f"model.base={paths['base']}"] if cfg.model.base else [])
    if cfg.guard.name != "none":
        swaps.append(f"guard.model={paths['guard']}")
    if cfg.data.kind == "real":
        swaps += [f"data.root={paths['data']}", *pin_overrides(paths["data"])]
    return swaps


def with_values(cfg, overrides: list[str]):
    """``cfg`` with value overrides (not groups) applied as Hydra applies a command line's: parsed, then merged into
    keys that must exist. It spares a second ~1 s composition per job."""
    for override in OverridesParser.create().parse_overrides(overrides):
        OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
    return cfg


@functools.cache
def check_job(job: tuple[str, ...], out: Path, paths_key: tuple[tuple[str, Path], ...]) -> None:
    """Compose one job, swap its hub models and data for the stand-ins, validate it and check its data files (once
    per job: the docs repeat some)."""
    from pact.run.pipeline import check_data

    cfg = compose_config(list(job), check=False)
    check_data(validate(with_values(cfg, stand_in_swaps(cfg, out, dict(paths_key)))))


def test_the_docs_print_the_run_commands_this_test_reads():
    found = doc_commands()
    assert {"README.md", "docs/gpu.md", "docs/scaling.md"} <= {d for d, _ in found}
    assert any("experiment=paper_llama31" in c and "hydra.mode=RUN" not in c for _, c in found)  # the table


def test_the_papers_table_is_one_multirun_of_the_official_cells():
    """experiment=paper_llama31 alone: 8 cells (SST-2 at 3 ratios, AG News at 5) x 5 methods, the cells those of
    data.mixture."""
    table = jobs(["experiment=paper_llama31"])
    assert len(table) == 40
    cells = {j for job in table for j in job if j.startswith("+cell=")}
    mixture = compose_config(["experiment=paper_llama31"], check=False).data.mixture
    want = {(t, float(p)) for t, ratios in mixture.items() for p in ratios}
    got = set()
    for cell in cells:
        conf = OmegaConf.load(ROOT / "conf" / "cell" / f"{cell.split('=')[1]}.yaml")
        got.add((conf.defaults[0]["override /task"], float(conf.poison.ratio)))
    assert got == want


@pytest.mark.slow
@pytest.mark.parametrize("doc, command", doc_commands())
def test_a_documented_run_command_composes_and_validates_every_job(doc, command, stand_ins):
    out, paths = stand_ins
    paths = tuple(sorted(paths.items()))
    for job in covering(jobs(arguments(command))):
        try:
            check_job(tuple(job), out, paths)
        except (ConfigError, FileNotFoundError, ValueError) as err:
            pytest.fail(f"{doc}: `{command}`: the job {job} fails: {err}")


def test_a_broken_command_fails(stand_ins, tmp_path):
    """What the doc test catches: a documented command whose cell has no official file, or whose method is unknown."""
    out, paths = stand_ins
    paths = tuple(sorted(paths.items()))
    doc = ("```bash\npython -m experiments.run experiment=paper_llama31 hydra.mode=RUN method=pact_lora \\\n"
           "    task=sst2 poison.ratio=0.2\n```\n")
    [command] = run_commands(doc)
    [job] = jobs(arguments(command))
    with pytest.raises(ConfigError, match="no official file for task=sst2 poison.ratio=0.2"):
        check_job(tuple(job), out, paths)
    with pytest.raises(Exception, match="pact_lora2"):
        check_job(tuple(o.replace("method=pact_lora", "method=pact_lora2") for o in job), out, paths)


def test_a_covering_set_holds_every_swept_value():
    table = jobs(["experiment=paper_llama31", "seed=0,1"])
    assert len(table) == 80
    cover = covering(table)
    assert len(cover) == 8 and all(set(col) == set(c) for col, c in zip(zip(*table), zip(*cover)))


def test_swapping_values_after_composition_equals_composing_with_them(stand_ins):
    """The doc test's shortcut is Hydra's own result: a paper job with the stand-ins' swaps applied to its composed
    config equals the job composed with them on its command line; a swap of a key the config lacks fails."""
    out, paths = stand_ins
    job = ["experiment=paper_llama31", "method=pact_lora", "+cell=sst2_p01"]
    cfg = compose_config(job, check=False)
    swaps = stand_in_swaps(cfg, out, paths)
    assert len(swaps) > 5 and any(s.startswith("data.sources.") for s in swaps)
    assert OmegaConf.to_container(with_values(cfg, swaps)) == \
        OmegaConf.to_container(compose_config([*job, *swaps], check=False))
    with pytest.raises(Exception, match="no_such_key"):
        with_values(cfg, ["model.no_such_key=1"])
