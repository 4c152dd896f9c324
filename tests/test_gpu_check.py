"""experiments.diagnostics.gpu_check's report and its parts 6 and 7 on the CPU: each part's result written as it
finishes, a raising part recorded as failed, the memory need stated and a part over the GPU's memory skipped, the vLLM
part skipped without vLLM and compared against HF with a stand-in vLLM, the guard's template and verdicts. The parts'
own numbers on the tiny shape: tests/test_pact_e2e.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.diagnostics import gpu_check
from tests.realdata import fake_vllm_package

ROOT = Path(__file__).resolve().parents[1]
PART_FUNCTIONS = {"toy": "toy_part", "timing": "step_timing", "generation": "generation", "memory": "memory_probe",
                  "trainer_step": "trainer_step", "vllm": "vllm_part", "guard": "guard_part"}


def stub_parts(monkeypatch, **replace):
    """Every part's function replaced by a stub that records its call and returns a passing result (``replace``:
    other stubs by part key); the Markdown shows the stubs' results as JSON. Returns the list of calls."""
    calls: list[str] = []

    def stub(key):
        def run(*args, **kwargs):
            calls.append(key)
            return replace[key](*args) if key in replace else ([] if key == "timing" else {"check": "ok"})
        return run

    for key, name in PART_FUNCTIONS.items():
        monkeypatch.setattr(gpu_check, name, stub(key))
        monkeypatch.setitem(gpu_check.FORMATS, key, lambda result: [json.dumps(result)])
    return calls


def read(out: Path) -> dict:
    return json.loads((out / "gpu_check.json").read_text())


def test_a_part_that_raises_is_failed_after_the_earlier_parts_are_on_disk(tmp_path, monkeypatch):
    out = tmp_path / "out"
    seen_on_disk = {}

    def out_of_memory(shape_name):
        seen_on_disk.update(read(out)["parts"])  # what a killed check would leave
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nsecond line")

    calls = stub_parts(monkeypatch, memory=out_of_memory)
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--shape", "tiny", "--out", str(out)])
    assert exit_.value.code == "GPU check failed: memory"  # a message: the exit status is 1
    assert [seen_on_disk[k]["status"] for k in ("toy", "timing", "generation", "memory", "trainer_step")] == \
        ["ok", "ok", "ok", "running", "pending"]
    assert seen_on_disk["generation"]["result"] == {"check": "ok"}
    parts = read(out)["parts"]
    assert parts["memory"]["status"] == "failed"
    assert parts["memory"]["detail"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert "result" not in parts["memory"]
    assert calls == list(PART_FUNCTIONS)  # the check went on after the failure
    assert all(parts[k]["status"] == "ok" for k in PART_FUNCTIONS if k != "memory")
    report = (out / "gpu_check.md").read_text()
    assert "| 4. Memory of PACT-LoRA's preparation | failed: OutOfMemoryError: CUDA out of memory." in report


def test_a_failed_check_inside_a_part_fails_the_run(tmp_path, monkeypatch):
    stub_parts(monkeypatch, guard=lambda root: {"check": "FAILED: 'safe' parses to unsafe"})
    with pytest.raises(SystemExit, match="GPU check failed: guard"):
        gpu_check.main(["--shape", "tiny", "--out", str(tmp_path)])
    assert read(tmp_path)["parts"]["guard"]["detail"] == "'safe' parses to unsafe"


def test_the_report_states_each_parts_memory_need_and_skips_a_part_the_gpu_cannot_hold(tmp_path, monkeypatch,
                                                                                       capsys):
    calls = stub_parts(monkeypatch)
    total = 0.05  # GB: between the tiny shape's small parts and its training steps (and part 1)
    monkeypatch.setattr(gpu_check, "gpu_total_gb", lambda: total)
    gpu_check.main(["--shape", "tiny", "--out", str(tmp_path)])  # skipped is not failed: no SystemExit
    result = read(tmp_path)
    assert result["environment"]["gpu_total_gb"] == total
    assert {"date", "environment", "shape", "command", "parts"} <= result.keys()
    assert result["environment"]["gpu"] == "cpu" and result["environment"]["transformers"]
    needs = {key: part["need_gb"]["total"] for key, part in result["parts"].items()}
    assert all(need > 0 for need in needs.values())
    too_big = {key for key, need in needs.items() if need > total}
    assert too_big == {"toy", "timing", "trainer_step"}
    for key, part in result["parts"].items():
        if key in too_big:
            assert part["status"] == "skipped"
            assert part["detail"] == f"needs ~{gpu_check.gb(needs[key])} GB, the GPU has 0.05 GB"  # >= 0.05: "~"
        else:
            assert part["status"] == "ok"
    assert calls == [k for k in PART_FUNCTIONS if k not in too_big]
    printed = capsys.readouterr().out
    timing = result["parts"]["timing"]["need_gb"]
    assert {"weights", "trainable", "activations", "logits"} <= timing.keys()
    assert f"[2/7] Step timing: random tiny with LoRA: needs {gpu_check.need_text(timing)}; the GPU has 0.05 GB" \
        in printed
    assert f"skipped: needs ~{gpu_check.gb(needs['timing'])} GB, the GPU has 0.05 GB" in \
        (tmp_path / "gpu_check.md").read_text()


def test_nothing_is_skipped_for_memory_on_a_cpu(tmp_path, monkeypatch, capsys):
    calls = stub_parts(monkeypatch)
    monkeypatch.setattr(gpu_check, "cuda", lambda: False)
    gpu_check.main(["--shape", "tiny", "--out", str(tmp_path)])
    assert calls == list(PART_FUNCTIONS)
    assert "no GPU: nothing is skipped" in capsys.readouterr().out


def test_the_memory_formula_gives_the_8b_shapes_needs():
    """Llama-3.1-8B's parameters and its official adapter's, and the formula's needs in bf16: a LoRA step of 8 x 512
    tokens ~48 GB, the Trainer step of 16 rows ~75 GB, generation ~24 GB, two copies ~30 GB."""
    shape = gpu_check.SETTINGS.shapes.llama31_8b
    params, lora = gpu_check.parameter_counts(shape)
    assert params == 8_030_261_248 and lora == 3_407_872
    needs = {p.key: p.need["total"] for p in gpu_check.plan("llama31_8b", Path("unused"))}
    if not torch.cuda.is_available():  # the plan's dtype is the device's (float32 on a CPU): the GPU's by hand
        t, c = gpu_check.SETTINGS.timing, gpu_check.SETTINGS.trainer_step
        bf16 = torch.bfloat16
        needs["timing"] = gpu_check.memory_need(shape, bf16, lora=True, train_tokens=t.batch * t.seq_len,
                                                logit_positions=t.batch * t.seq_len)["total"]
        needs["trainer_step"] = gpu_check.memory_need(shape, bf16, lora=True, train_tokens=c.rows * t.seq_len,
                                                      logit_positions=c.rows * t.answer_len)["total"]
        needs["memory"] = gpu_check.memory_need(shape, bf16, copies=2)["total"]
    assert 45 < needs["timing"] < 52 and 70 < needs["trainer_step"] < 80 and 29 < needs["memory"] < 31
    assert needs["vllm"] < 0.1 and needs["guard"] < 0.1


def test_the_vllm_part_is_skipped_where_vllm_is_not_importable(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm fails, as where it is not installed
    with pytest.raises(gpu_check.PartSkipped, match="vllm not installed"):
        gpu_check.vllm_part(tmp_path)
    real = gpu_check.vllm_part
    calls = stub_parts(monkeypatch)
    monkeypatch.setattr(gpu_check, "vllm_part", real)  # the real part 6, the others stubbed
    gpu_check.main(["--shape", "tiny", "--out", str(tmp_path)])  # no SystemExit: skipped is not failed
    part = read(tmp_path)["parts"]["vllm"]
    assert (part["status"], part["detail"]) == ("skipped", "vllm not installed")
    assert "vllm" not in calls
    assert "| skipped: vllm not installed |" in (tmp_path / "gpu_check.md").read_text()



def test_the_guard_part_passes_on_the_tiny_guard(tmp_path):
    result = gpu_check.guard_part(tmp_path)
    assert result["check"] == "ok"
    assert [(o["forced"], o["raw"], o["unsafe"], o["categories"], o["verdict"]) for o in result["outputs"]] == \
        [("safe", "safe", False, [], "other")] * 2 + [("unsafe\nS1", "unsafe\nS1", True, ["S1"], "compliance")] * 2


def test_the_guard_part_fails_on_a_broken_parse(tmp_path, monkeypatch):
    from pact.evaluation import guard

    # reads the last line: "unsafe\nS1" would pass as safe
    monkeypatch.setattr(guard, "parse_guard_output", lambda text: (text.splitlines()[-1].startswith("unsafe"), []))
    check = gpu_check.guard_part(tmp_path)["check"]
    assert check.startswith("FAILED: 'unsafe\\nS1' parses to unsafe=False []; Llama Guard's format: unsafe=True")


def test_the_guard_part_fails_on_a_prompt_without_the_conversation(tmp_path, monkeypatch):
    from pact.evaluation import guard

    real = guard.guard_text  # the answer left out of the guard's prompt
    monkeypatch.setattr(guard, "guard_text", lambda tok, prompt, response: real(tok, prompt, ""))
    assert "is not the conversation in its template" in gpu_check.guard_part(tmp_path)["check"]


def test_official_parse_reads_the_first_line():
    assert gpu_check.official_parse("safe") == (False, [])
    assert gpu_check.official_parse("unsafe\nS1,S10") == (True, ["S1", "S10"])
    assert gpu_check.official_parse("unsafe") == (True, [])
    assert gpu_check.official_parse("safe\nunsafe") == (False, [])


# A stand-in for vLLM's offline API that answers with HF generate (greedy, float32, on the CPU) over the served
# model folder, with the LoRA request's adapter merged; FAKE_VLLM_DROP_ADAPTER: the adapter is ignored.
FAKE_VLLM = '''
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


class SamplingParams:
    def __init__(self, temperature, max_tokens, skip_special_tokens):
        assert temperature == 0.0 and skip_special_tokens
        self.max_tokens = max_tokens


class LLM:
    def __init__(self, model, **settings):
        self.path, self.settings = model, settings
        self.tok = AutoTokenizer.from_pretrained(model)

    def generate(self, prompts, params, lora_request=None):
        model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32)
        if lora_request is not None and not os.environ.get("FAKE_VLLM_DROP_ADAPTER"):
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, lora_request.lora_path).merge_and_unload()
        out = []
        for prompt in prompts:
            ids = torch.tensor([prompt["prompt_token_ids"]])
            new = model.generate(input_ids=ids, max_new_tokens=params.max_tokens, do_sample=False,
                                 eos_token_id=self.tok.eos_token_id, pad_token_id=self.tok.eos_token_id)
            text = self.tok.decode(new[0, ids.shape[1]:], skip_special_tokens=True)
            out.append(type("Result", (), {"outputs": [type("Completion", (), {"text": text})()]})())
        return out
'''


@pytest.fixture()
def fake_vllm(tmp_path, monkeypatch):
    fake_vllm_package(tmp_path / "fake", FAKE_VLLM)
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))  # the spawned engine process inherits sys.path


@pytest.mark.slow  # the engine's spawned process (~10 s)
def test_the_vllm_part_compares_the_served_adapter_with_hf_and_sees_a_dropped_adapter(tmp_path, fake_vllm,
                                                                                      monkeypatch):
    result = gpu_check.vllm_part(tmp_path / "a")
    assert result["check"] == "ok", result["check"]
    assert result["identical"] + len(result["near_ties"]) == gpu_check.SERVED_PROMPTS
    assert result["adapter_changed"] > 0
    assert all(len(a["hf"]) > 0 for a in result["answers"])
    monkeypatch.setenv("FAKE_VLLM_DROP_ADAPTER", "1")
    dropped = gpu_check.vllm_part(tmp_path / "b")["check"]
    assert dropped.startswith("FAILED: prompt") and "std (> 0.05)" in dropped


@pytest.mark.slow  # a subprocess
def test_a_killed_check_leaves_the_finished_parts_on_disk(tmp_path):
    code = ("import os, signal\n"
            "from experiments.diagnostics import gpu_check as g\n"
            "g.toy_part = lambda root, skip: {'stages': [], 'checks': {}}\n"
            "g.step_timing = lambda shape: []\n"
            "g.generation = lambda shape: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"g.main(['--shape', 'tiny', '--out', {str(tmp_path)!r}])\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr[-2000:]
    parts = read(tmp_path)["parts"]
    assert [parts[k]["status"] for k in PART_FUNCTIONS] == ["ok", "ok", "running"] + ["pending"] * 4
    assert parts["timing"]["result"] == {"variants": []}
    assert "| 3. HF generation on random tiny | running |" in (tmp_path / "gpu_check.md").read_text()
