# make reproduce: the toy-world study end to end -> results/ ; make test: the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup reproduce smoke test figures bench clean

setup: $(STAMP)

# torch first (the local CPU wheel); installing the package before it would pull a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

reproduce: setup
	$(PY) -m experiments.prepare experiment=reproduce method=vaccine
	$(PY) -m experiments.run experiment=reproduce
	$(PY) -m experiments.run experiment=pact_ablation_lambda
	$(PY) -m experiments.run experiment=pact_ablation_topk
	$(PY) -m experiments.run experiment=pact_ablation_switches
	$(MAKE) figures
	$(PY) -m analysis.world_stats --out results
	$(PY) -m experiments.safety_tokens > results/safety_tokens.txt

smoke: setup
	PACT_STORE=outputs/smoke/store PACT_RUNS=outputs/smoke/runs $(PY) -m experiments.run experiment=smoke
	$(PY) -m analysis.report --runs outputs/smoke/runs --out outputs/smoke

test: setup
	$(PY) -m pytest -q

figures: setup
	$(PY) -m analysis.report --experiment reproduce --experiment pact_ablation_lambda \
		--experiment pact_ablation_topk --experiment pact_ablation_switches --out results
	$(PY) -m analysis.token_confidence --experiment reproduce --p 0.1 --seed 0 --out results

bench: setup
	$(PY) -m experiments.bench --out results/bench.md

clean:
	rm -rf outputs multirun
