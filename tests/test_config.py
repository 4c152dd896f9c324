import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

from pact.config import ConfigError, validate
from tests.conftest import CONF_DIR


def _compose(*overrides):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_default_config_is_valid():
    cfg = validate(_compose())
    assert cfg.method.name == "sft" and cfg.finetune.lora.r == 8


@pytest.mark.parametrize("override,message", [
    ("poison.ratio=1.5", r"poison\.ratio=1\.5 is out of range: must be >= 0 and <= 1"),
    ("finetune.optim.lr=-1", r"finetune\.optim\.lr=-1(\.0)? is out of range: must be > 0"),
    ("method.adapter=qlora", r"method\.adapter='qlora' is not allowed; choose one of \['full', 'lora'\]"),
    ("method.name=nope", r"method\.name='nope' is not allowed"),
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


def test_experiment_configs_compose():
    names = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
    assert {"smoke", "poison_ratio", "tasks", "pact_ablation_lambda"} <= set(names)
    for name in names:
        cfg = validate(_compose(f"experiment={name}"))
        assert cfg.experiment_name == name


def test_make_reproduce_studies_exist():
    makefile = (Path(CONF_DIR).parent / "Makefile").read_text()
    studies = re.search(r"^STUDIES := (.+)$", makefile, re.M).group(1).split()
    assert studies[0] == "poison_ratio"  # the main table; token_confidence reads it
    for name in studies:
        assert (Path(CONF_DIR) / "experiment" / f"{name}.yaml").is_file(), name
