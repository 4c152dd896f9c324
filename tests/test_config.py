import re

import pytest
from hydra.errors import MissingConfigException

from pact.config import CONF_DIR, ConfigError, compose_config, validate


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
    ("method._target_=pact.methods.Nope", r"_target_='pact\.methods\.Nope' does not exist"),
    ("method._target_=pact.data.SFTCollator", r"is not a subclass of pact\.methods\.Method"),
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


def test_a_hub_model_with_the_toy_optimiser_is_told_so(caplog):
    """A hub model under the root config's optimiser (tuned for the toy world: lr 5e-4, LoRA 5e-3, float32) gets a
    warning that names the official recipe's experiment; with that experiment, or an optimiser of one's own, none."""
    import logging

    with caplog.at_level(logging.WARNING, logger="pact.config"):
        validate(_compose("model=llama3.1-8b-instruct", "data=real", "task=sst2"))
    assert len(caplog.records) == 1 and "experiment=paper_llama31" in caplog.text and "toy world" in caplog.text
    for overrides in (["experiment=paper_llama31", "hydra.mode=RUN"],
                      ["model=llama3.1-8b-instruct", "data=real", "task=sst2", "finetune.optim.lr=3e-5"],
                      ["model=llama3.1-8b-instruct", "data=real", "task=sst2", "finetune.lora_lr=null"],
                      ["model=toy"], ["experiment=smollm2_cpu", "hydra.mode=RUN"]):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pact.config"):
            validate(_compose(*overrides))
        assert not caplog.records, overrides


def test_experiment_configs_compose():
    names = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    assert {"smoke", "poison_ratio", "tasks", "pact_ablation_lambda"} <= set(names)
    for name in names:
        cfg = validate(_compose(f"experiment={name}"))
        assert cfg.experiment_name == name


def test_make_reproduce_studies_exist():
    makefile = (CONF_DIR.parent / "Makefile").read_text()
    studies = re.search(r"^STUDIES := (.+)$", makefile, re.M).group(1).split()
    assert studies[0] == "poison_ratio"  # the main table; token_confidence reads it
    for name in studies:
        assert (CONF_DIR / "experiment" / f"{name}.yaml").is_file(), name
