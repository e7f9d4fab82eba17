"""LoRA on a base model whose vocabulary lacks the role markers (``data.markersAsSpecialTokens``):
the grown embedding layers are trained and saved with the adapter, so that a resume, ``merge-lora``
and ``generate`` all use the rows training used; and ``generate`` builds its prompts with the
markers the model was trained with. Real ``mft-train`` runs: tiny GPT-NeoX, the tiny tokenizer."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mft_trainer import checkpoint
from mft_trainer.config import DataConfig
from mft_trainer.data import encode_prompt

from tests.training_processes import PYTHON, REPO, TINY, child_env

from .conftest import run_training, write_config
from .test_training import config, step_losses, train

pytestmark = pytest.mark.slow

MARKERS = {"role_start": "<|im_start|>", "role_end": "<|im_sep|>"}
EMBEDDINGS = ("base_model.model.gpt_neox.embed_in.weight", "base_model.model.embed_out.weight")
QUESTION = "Write a function that adds two numbers"


def mft_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "mft_trainer", *args], env=child_env(), capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def generate_cli(model: Path, *options: str) -> subprocess.CompletedProcess:
    return mft_train("generate", "--model", str(model), "--prompt", QUESTION, "--max-new-tokens", "6",
                     "--device", "cpu", *options)


@pytest.fixture(scope="module")
def run(tmp_path_factory, base_model):
    tmp = tmp_path_factory.mktemp("lora-added-tokens")
    raw = config(tmp / "ckpt", "lora", base=base_model, max_steps=6, learning_rate=1e-2)
    raw["data"] |= {"markers_as_special_tokens": True, **MARKERS}
    proc = train(tmp, "lora", raw)
    assert "resizing embeddings from 4096 to the tokenizer's 4098 tokens" in proc.stderr
    return raw, proc


@pytest.fixture(scope="module")
def merged(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("merged") / "model"
    proc = mft_train("merge-lora", "--adapter", str(latest(run)), "--out", str(out))  # base from adapter_config.json
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def latest(run) -> Path:
    """The run's latest checkpoint: its LoRA adapter, tokenizer and trainer state."""
    return checkpoint.latest(Path(run[0]["checkpoint"]["mount_path"])).path


def test_the_adapter_holds_the_grown_embedding_layers_trained(run, base_model):
    from transformers import AutoModelForCausalLM

    saved = checkpoint.complete(Path(run[0]["checkpoint"]["mount_path"]))
    first, last = (load_file(c.path / "adapter_model.safetensors") for c in (saved[0], saved[-1]))
    assert json.loads((saved[-1].path / "adapter_config.json").read_text())["modules_to_save"] == \
        ["embed_in", "embed_out"]
    base = AutoModelForCausalLM.from_pretrained(base_model)
    for key, base_weight in zip(EMBEDDINGS, (base.gpt_neox.embed_in.weight, base.embed_out.weight)):
        assert last[key].shape == (4098, TINY["hidden_size"])
        assert (last[key][4096:] - first[key][4096:]).abs().max() > 1e-4, key  # the markers' rows learn
        assert (last[key][:4096] - base_weight).abs().max() > 1e-4, key  # and so do the base model's
    assert any(".lora_A.weight" in key for key in last)


def test_the_adapter_is_peft_s_own_format(run, base_model):
    """peft loads it onto the base model grown to the tokenizer (its recipe for added tokens), and
    gives back the same tensors under the same names (the embedding layers as modules_to_save)."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = latest(run)
    model = AutoModelForCausalLM.from_pretrained(base_model)
    model.resize_token_embeddings(len(AutoTokenizer.from_pretrained(adapter)))
    peft_model = PeftModel.from_pretrained(model, str(adapter))
    written = load_file(adapter / "adapter_model.safetensors")
    assert set(EMBEDDINGS) <= written.keys()
    from_peft = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    assert from_peft.keys() == written.keys()
    for key, tensor in written.items():
        assert torch.equal(from_peft[key], tensor), key


def test_resume_continues_the_run_exactly(run, tmp_path):
    raw, full = run
    mount = tmp_path / "ckpt"
    shutil.copytree(raw["checkpoint"]["mount_path"], mount)
    start = checkpoint.complete(mount)[0]
    for later in checkpoint.complete(mount)[1:]:
        shutil.rmtree(later.path)
    resumed_raw = json.loads(json.dumps(raw))
    resumed_raw["checkpoint"]["mount_path"] = str(mount)
    resumed = run_training(write_config(tmp_path / "resume.yaml", resumed_raw))
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    assert f"resuming from {start.path}" in resumed.stderr
    expected, got = step_losses(full.stdout), step_losses(resumed.stdout)
    assert min(got) == start.step + 1 and max(got) == max(expected)
    for step, value in got.items():
        assert value == pytest.approx(expected[step], abs=1e-6), step
    final_full, final_resumed = (load_file(path / "adapter_model.safetensors")
                                 for path in (latest(run), checkpoint.latest(mount).path))
    assert final_full.keys() == final_resumed.keys()
    for key in final_full:
        torch.testing.assert_close(final_resumed[key], final_full[key], atol=1e-6, rtol=0)


def test_merged_model_has_the_trained_rows(run, merged):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mft_trainer.lora import load_for_inference

    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert len(tokenizer) == 4098 and tokenizer.convert_tokens_to_ids(list(MARKERS.values())) == [4096, 4097]
    ids = torch.tensor([[4096, 100, 200, 4097, 300, 4096, 4097, 5]])  # the markers among ordinary tokens
    with torch.no_grad():
        merged_model = AutoModelForCausalLM.from_pretrained(merged).eval()
        assert merged_model.config.vocab_size == 4098
        from_merged = merged_model(input_ids=ids).logits
        from_adapter = load_for_inference(latest(run)).eval()(input_ids=ids).logits
    torch.testing.assert_close(from_merged, from_adapter, atol=1e-4, rtol=0)
    assert torch.equal(merged_model.gpt_neox.embed_in.weight, load_file(
        latest(run) / "adapter_model.safetensors")[EMBEDDINGS[0]])


def test_generate_answers_alike_from_the_merged_model_and_the_checkpoint(run, merged, base_model):
    answers = [generate_cli(merged), generate_cli(latest(run)), generate_cli(latest(run), "--base", str(base_model))]
    for proc in answers:
        assert proc.returncode == 0, proc.stderr[-4000:]
    assert answers[0].stdout == answers[1].stdout == answers[2].stdout
    assert answers[0].stdout.strip()


def test_merge_writes_the_prompt_format_next_to_the_model(merged):
    assert json.loads((merged / "mft_prompt.json").read_text()) == {**MARKERS, "normalize_punctuation": False}


@pytest.mark.parametrize("which", ["checkpoint", "merged"])
def test_the_saved_chat_template_gives_the_prompt_generate_builds(which, run, merged):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(latest(run) if which == "checkpoint" else merged)
    chat = [{"role": "user", "content": QUESTION}]
    assert tokenizer.apply_chat_template(chat, add_generation_prompt=True) == \
        encode_prompt(QUESTION, tokenizer, data_config=DataConfig(**MARKERS))


def test_the_merged_model_answers_alike_in_plain_transformers(merged):
    """Without this package: the chat template for the prompt, generate() stopping at the trained eos
    by itself (generation_config.json), and the pad id in config.json."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype="auto").eval()
    assert model.generation_config.eos_token_id == model.config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == model.config.pad_token_id == tokenizer.pad_token_id
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    output = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert generate_cli(merged).stdout == answer + "\n"


@pytest.mark.parametrize(("base_dtype", "option", "written"),
                         [("float16", "auto", "float16"), ("float32", "auto", "float32"),
                          ("float32", "bfloat16", "bfloat16")])
def test_merge_writes_the_weights_in_the_chosen_dtype(base_dtype, option, written, run, base_model, tmp_path):
    """Merged in float32, then rounded once; config.json names the dtype for old and new readers."""
    from transformers import AutoModelForCausalLM

    from mft_trainer import cli
    from mft_trainer.lora import merge

    base, out = tmp_path / "base", tmp_path / "merged"
    AutoModelForCausalLM.from_pretrained(base_model, dtype=getattr(torch, base_dtype)).save_pretrained(base)
    assert cli.main(["merge-lora", "--adapter", str(latest(run)), "--base", str(base), "--out", str(out),
                     "--dtype", option]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == written
    weights = load_file(out / "model.safetensors")
    in_float32 = merge(latest(run), base, "float32").state_dict()
    for name, tensor in weights.items():
        assert torch.equal(tensor, in_float32[name].to(getattr(torch, written))), name


def test_peft_loads_the_checkpoint_on_its_own(run):
    """As the README shows: AutoPeftModelForCausalLM grows the base model to the checkpoint's tokenizer."""
    from peft import AutoPeftModelForCausalLM

    from mft_trainer.lora import load_for_inference

    ids = torch.tensor([[4096, 100, 200, 4097, 300]])
    with torch.no_grad():
        from_peft = AutoPeftModelForCausalLM.from_pretrained(str(latest(run))).eval()(input_ids=ids).logits
        ours = load_for_inference(latest(run)).eval()(input_ids=ids).logits
    torch.testing.assert_close(from_peft, ours, atol=0, rtol=0)


@pytest.mark.parametrize("which", ["checkpoint", "merged"])
def test_generate_prompts_with_the_markers_the_model_was_trained_with(which, run, merged, monkeypatch):
    from mft_trainer import generation

    folder = latest(run) if which == "checkpoint" else merged
    prompts = capture_prompts(monkeypatch, folder)
    tokenizer = generation.load(folder, "cpu")[1]
    assert prompts == [encode_prompt(QUESTION, tokenizer, data_config=DataConfig(**MARKERS))]
    assert prompts[0].count(4096) == 2 and prompts[0].count(4097) == 2  # each marker a single token
    assert generation.prompt_format(folder) == DataConfig(**MARKERS)

    overridden = capture_prompts(monkeypatch, folder, "--role-start", "<s>", "--role-end", "</s>")
    assert overridden == [encode_prompt(QUESTION, tokenizer, data_config=DataConfig(role_start="<s>", role_end="</s>"))]
    assert 4096 not in overridden[0]


def capture_prompts(monkeypatch, folder: Path, *options: str) -> list[list[int]]:
    """The token ids ``mft-train generate`` hands to the model."""
    from mft_trainer import cli, generation

    seen = []
    real = generation.generate

    def spy(model, tokenizer, prompts, sampling):
        seen.extend(prompts)
        return real(model, tokenizer, prompts, sampling)

    monkeypatch.setattr(generation, "generate", spy)
    assert cli.main(["generate", "--model", str(folder), "--prompt", QUESTION, "--max-new-tokens", "2",
                     "--device", "cpu", *options]) == 0
    return seen


def test_generate_takes_the_base_model_of_a_checkpoint_moved_off_the_cluster(run, base_model, tmp_path):
    moved = tmp_path / "checkpoint"
    shutil.copytree(latest(run), moved)
    adapter_config = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps(adapter_config | {"base_model_name_or_path": "/base"}))

    missing = generate_cli(moved)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == (
        f"mft-train generate: {moved}: its base model /base (adapter_config.json) is not here; "
        f"give the base model folder with --base")
    given = generate_cli(moved, "--base", str(base_model))
    assert given.returncode == 0, given.stderr[-4000:]
    assert given.stdout == generate_cli(latest(run)).stdout


def test_generate_refuses_a_base_model_for_a_full_model(merged, base_model):
    proc = generate_cli(merged, "--base", str(base_model))
    assert proc.returncode == 1 and "has no adapter_config.json" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_prompt_format_defaults_for_a_plain_model_folder(base_model):
    from mft_trainer.generation import prompt_format

    assert prompt_format(base_model) == DataConfig()
    assert prompt_format(base_model, role_start="<s>") == DataConfig(role_start="<s>")
