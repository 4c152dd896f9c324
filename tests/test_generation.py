"""The HF engine's dropping of finished rows (engine.drop_finished_every) against one generate call per batch."""

import pytest
import torch
from transformers import GenerationMixin, LlamaConfig, LlamaForCausalLM

from pact.evaluation.generation import HFEngine


class IdTokenizer:
    """Just what HFEngine uses of a tokenizer: pad and EOS ids, and ``decode`` of ids (special ones skipped)."""

    def __init__(self, eos: int | None):
        self.pad_token_id, self.eos_token_id = 0, eos

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(str(i) for i in ids.tolist() if i not in (self.pad_token_id, self.eos_token_id))


def test_dropping_finished_rows_keeps_every_answer_and_shrinks_the_batch(monkeypatch):
    """A random tiny Llama, with as EOS a token that some of its greedy answers reach early and others never: the
    answers are the same with the ended rows dropped every 2 tokens as from one ``generate`` call per batch, and
    the later calls run on fewer rows."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, bos_token_id=None,
                                         eos_token_id=None, pad_token_id=0))
    prompts = [torch.randint(1, 64, (int(n),)).tolist() for n in torch.randint(2, 9, (16,))]
    free = HFEngine(model, IdTokenizer(None), batch_size=16).generate(prompts, 12)
    counts = {t: sum(t in a.split() for a in free) for a in free for t in a.split()}
    eos = max((t for t, c in counts.items() if c < len(prompts)), key=lambda t: counts[t])  # ends some rows only

    rows_per_call = []
    real_generate = GenerationMixin.generate

    def spy(self, *args, **kwargs):
        rows_per_call.append(len(kwargs["input_ids"]))
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    once = HFEngine(model, IdTokenizer(int(eos)), batch_size=8).generate(prompts, 12)
    assert rows_per_call == [8, 8]
    rows_per_call.clear()
    dropping = HFEngine(model, IdTokenizer(int(eos)), batch_size=8, drop_finished_every=2).generate(prompts, 12)
    assert dropping == once
    assert len({len(a.split()) for a in once}) > 1  # some answers end before others
    assert len(rows_per_call) > 2 and min(rows_per_call) < 8  # more calls than batches, on fewer rows


def test_engine_settings_reach_the_hf_engine():
    """engine.drop_finished_every: 0 by default (one generate call per batch, as the toy study's answers were
    made); the SmolLM2 study sets it; build_engine passes it on; a negative value names the key."""
    from pact.evaluation.generation import build_engine
    from pact.run.config import ConfigError, compose_config, validate

    assert validate(compose_config([])).engine.drop_finished_every == 0
    cfg = validate(compose_config(["experiment=smollm2_cpu", "hydra.mode=RUN"]))
    engine = build_engine(cfg.engine, LlamaForCausalLM(LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8,
                                                                   num_hidden_layers=1, num_attention_heads=1)),
                          IdTokenizer(1), None, "float32", 0)
    assert (engine.batch_size, engine.drop_finished_every) == (100, 8)
    with pytest.raises(ConfigError, match=r"engine\.drop_finished_every"):
        validate(compose_config(["engine.drop_finished_every=-1"], check=False))


# ---- vLLM under torchrun and beside a loaded model --------------------------------------------------------------
def test_a_vllm_engine_under_torchrun_sees_its_ranks_gpu_alone_and_no_launcher_variables(monkeypatch):
    from pact.evaluation.generation import LAUNCHER_VARIABLES, engine_environment
    from pact.runtime import dist

    assert engine_environment(1) == {} and engine_environment(4) == {}  # one process: vLLM as it comes
    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    env = engine_environment(1)
    assert env["CUDA_VISIBLE_DEVICES"] == "6"  # rank 1's own GPU, not GPU 0
    assert {k for k, v in env.items() if v is None} == set(LAUNCHER_VARIABLES) >= {"RANK", "WORLD_SIZE",
                                                                                   "MASTER_PORT", "LOCAL_RANK"}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert engine_environment(1)["CUDA_VISIBLE_DEVICES"] == "1"
    with pytest.raises(ValueError, match="tensor_parallel_size=2 under torchrun"):
        engine_environment(2)


class ResidentModel(torch.nn.Module):
    """A model that says it is on a GPU: records where ``to`` sends it."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.on = torch.device("cuda", 0)
        self.moves: list[str] = []

    def parameters(self, recurse: bool = True):
        yield type("P", (), {"device": self.on})()

    def to(self, device):
        self.on = torch.device(device)
        self.moves.append(str(device))
        return self


def test_a_vllm_engine_runs_while_the_callers_model_waits_on_the_cpu(monkeypatch, tmp_path):
    """A fine-tune holds the aligned model when PACT's safety pairs start a vLLM engine: the model leaves the GPU
    for the engine's lifetime and comes back after (on an 8B model, 16 GB the engine would otherwise lack)."""
    import concurrent.futures

    from omegaconf import OmegaConf

    from pact.evaluation import generation as G

    model, seen = ResidentModel(), []

    class InProcess:  # the engine's process, run here: records where the caller's model is meanwhile
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def submit(self, fn, *args):
            seen.append(str(model.on))
            return type("F", (), {"result": lambda self: [["ok"]]})()

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", InProcess)
    ecfg = OmegaConf.create({"name": "vllm", "batch_size": 8, "drop_finished_every": 0, "gpu_memory_utilization": 0.8,
                             "tensor_parallel_size": 1, "max_model_len": 0, "max_lora_rank": 16})
    engine = G.build_engine(ecfg, model, IdTokenizer(2), tmp_path, "bfloat16", 0)
    assert engine.generate([[1, 2]], 4) == ["ok"]
    assert seen == ["cpu"] and model.moves == ["cpu", "cuda:0"] and model.on == torch.device("cuda", 0)
    assert G.build_engine(ecfg, None, IdTokenizer(2), tmp_path, "bfloat16", 0).generate([[1]], 4) == ["ok"]


def test_validate_refuses_a_tensor_parallel_engine_under_torchrun_before_any_work(monkeypatch):
    from pact.run.config import ConfigError, compose_config, validate
    from pact.runtime import dist

    cfg = compose_config(["engine=vllm", "engine.tensor_parallel_size=2"], check=False)
    validate(cfg.copy())  # one process: vLLM may spread over the GPUs
    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    with pytest.raises(ConfigError, match="tensor_parallel_size=2 under torchrun"):
        validate(cfg)
