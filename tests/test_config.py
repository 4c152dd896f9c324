import re

import pytest
from hydra.errors import MissingConfigException

from pact.run.config import CONF_DIR, ConfigError, compose_config, validate


def _compose(*overrides):
    return compose_config(overrides, check=False)


def test_default_config_is_valid():
    cfg = validate(_compose())
    assert cfg.method.id == "sft" and cfg.finetune.lora.r == 8


@pytest.mark.parametrize("override,message", [
    ("poison.ratio=1.5", r"poison\.ratio=1\.5 is out of range: must be >= 0 and <= 1"),
    ("finetune.optim.lr=-1", r"finetune\.optim\.lr=-1(\.0)? is out of range: must be > 0"),
    ("method.adapter=qlora", r"method\.adapter='qlora' is not allowed; choose one of \['full', 'lora'\]"),
    ("method._target_=pact.nope.Nope",
     r"method 'sft' \(conf/method/sft\.yaml\): _target_='pact\.nope\.Nope' cannot be imported"),
    ("method._target_=pact.training.methods.Nope", r"_target_='pact\.training\.methods\.Nope' does not exist"),
    ("method._target_=pact.data.rows.SFTCollator", r"is not a subclass of pact\.training\.methods\.Method"),
    ("seed=abc", r"seed: Value 'abc' of type 'str' could not be converted to Integer"),
    ("finetune.optim.scheduler=warm", r"finetune\.optim\.scheduler='warm' is not allowed"),
    ("finetune.n=abc", r"finetune\.n"),
    ("+finetune.bogus=1", r"bogus"),
    ("poison.ratio=0.5", r"poison\.ratio=0\.5 needs 500 poison rows"),
])
def test_bad_values_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(_compose(override))


def test_unknown_group_option_lists_the_choices():
    with pytest.raises(MissingConfigException) as err:
        _compose("task=poetry")
    assert "sentiment" in str(err.value) and "poetry" in str(err.value)


def test_hub_model_needs_aligned():
    with pytest.raises(ConfigError, match="model.aligned"):
        validate(_compose("model=llama3.1-8b-instruct", "model.aligned=null"))


def _toy_warnings(caplog, *overrides) -> list[str]:
    import logging

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pact.run.config"):
        validate(_compose(*overrides))
    return [r.getMessage() for r in caplog.records]


def test_a_hub_model_with_the_toy_settings_is_told_so(caplog):
    """A hub model that keeps any value of the root config tuned for the toy world gets one warning listing each one
    it keeps by key (the engine and judge too where they are the root defaults) and naming the official recipe's
    experiment; with that experiment, or every tuned value set, none."""
    from pact.run.config import TOY_TUNED

    hub = ["model=llama3.1-8b-instruct", "data=real", "task=sst2"]
    [message] = _toy_warnings(caplog, *hub)
    assert "experiment=paper_llama31" in message and "toy world" in message
    assert all(f"{key}=" in message for key in TOY_TUNED) and "data=toy" not in message
    assert "engine=hf" in message and "judge=keyword_qi with guard=none" in message
    [message] = _toy_warnings(caplog, *hub, "finetune.optim.lr=3e-5")  # one value set: the others still apply
    assert "finetune.lora_lr=0.005" in message and "finetune.optim.lr" not in message
    [message] = _toy_warnings(caplog, "model=llama3.1-8b-instruct", "finetune.n=500")  # the root's data too
    assert "data=toy" in message and "finetune.n" not in message and "judge=oracle" in message
    own = ["finetune.n=5000", "finetune.optim.lr=3e-5", "finetune.optim.scheduler=cosine",
           "finetune.optim.dtype=bfloat16", "finetune.lora_lr=null"]
    for overrides in (["experiment=paper_llama31", "hydra.mode=RUN"], [*hub, *own],
                      ["model=toy"], ["experiment=smollm2_cpu", "hydra.mode=RUN"]):
        assert not _toy_warnings(caplog, *overrides), overrides


def test_show_config_gives_the_toy_settings_warning(capsys):
    """``--cfg job`` prints the config without running, and so without validation: experiments.run gives the
    warning before Hydra prints."""
    from experiments.run import warn_shown_config

    warn_shown_config(["model=llama3.1-8b-instruct", "finetune.optim.lr=3e-5", "--cfg", "job"])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: model=llama3.1-8b-instruct is a hub model") and "finetune.lora_lr=0.005" in line
    for argv in (["experiment=paper_llama31", "--cfg", "job"], ["model=llama3.1-8b-instruct"],  # runs: validate warns
                 ["model=llama3.1-8b-instruct", "task=poetry", "--cfg", "job"]):  # Hydra reports the bad option
        warn_shown_config(argv)
        assert not capsys.readouterr().err, argv


@pytest.mark.slow
def test_show_config_command_prints_the_warning():
    import subprocess
    import sys

    def show(*overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "experiments.run", *overrides, "--cfg", "job"],
                              cwd=CONF_DIR.parent, capture_output=True, text=True, timeout=120)

    done = show("model=llama3.1-8b-instruct", "finetune.optim.lr=3e-5")
    assert done.returncode == 0 and "finetune.lora_lr=0.005" in done.stderr and "warning: " in done.stderr
    assert "lr: 3.0e-05" in done.stdout  # the config itself, as Hydra prints it
    done = show("experiment=paper_llama31")
    assert done.returncode == 0 and "toy world" not in done.stderr, done.stderr


@pytest.mark.parametrize("overrides, named", [
    (["data=pact_official", "task=sst2"], "data=pact_official"),
    (["data=real_git", "task=sst2"], "data=real_git"),
    # a data option of one's own that sets no name (the schema's default names the toy world): named by its kind
    (["data=pact_official", "task=sst2", "data.name=toy"], "data.kind=real (data=pact_official, real, real_git)"),
])
def test_data_errors_name_the_data_group_chosen(overrides, named):
    with pytest.raises(ConfigError, match=rf"^{re.escape(named)} needs a model that reads text"):
        validate(_compose(*overrides))


def test_experiment_configs_compose():
    names = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    assert {"smoke", "poison_ratio", "tasks", "pact_ablation_lambda"} <= set(names)
    joins = {"smollm2_real_booster": "smollm2_real"}   # its rows join that study's tables (its own make target)
    for name in names:
        cfg = validate(_compose(f"experiment={name}"))
        assert cfg.experiment_name == joins.get(name, name)


def test_make_reproduce_studies_exist():
    makefile = (CONF_DIR.parent / "Makefile").read_text()
    studies = re.search(r"^STUDIES := (.+)$", makefile, re.M).group(1).split()
    assert studies[0] == "poison_ratio"  # the main table; token_confidence reads it
    for name in studies:
        assert (CONF_DIR / "experiment" / f"{name}.yaml").is_file(), name
