"""Model loading, LoRA, and export to a plain Hugging Face folder."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from posttrain.models.config import LoraConfig, ModelConfig
from posttrain.models.export import export_model
from posttrain.models.loading import (
    ModelLoadError,
    load_causal_lm,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
)
from posttrain.models.lora import apply_lora, disabled_adapter, is_peft_model, merge_lora


def _batch(tokenizer):
    texts = ["The quick brown fox jumps", "Add 12 and 7. The answer is"]
    return tokenizer(texts, return_tensors="pt", padding=True)


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def _plain(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


# --------------------------------------------------------------------------- device, dtype, names


def test_resolve_device_and_dtype():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="model.dtype: unknown dtype 'fp8'"):
        resolve_dtype("fp8", "cpu")
    with pytest.raises(ValueError, match="model.device: unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_world_name_resolves_through_the_world_package(monkeypatch, tiny_model_dir):
    import posttrain.world

    monkeypatch.setattr(posttrain.world, "base_model_path", lambda: tiny_model_dir, raising=False)
    assert resolve_model_path("world") == str(tiny_model_dir)
    monkeypatch.delattr(posttrain.world, "base_model_path")
    with pytest.raises(ModelLoadError, match="embedded world's base model"):
        resolve_model_path("world")


def test_missing_path_and_unreachable_hub_name(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "nope" / "model"
    with pytest.raises(ModelLoadError, match=f"no folder at {missing}"):
        load_causal_lm(ModelConfig(name_or_path=str(missing), device="cpu"))
    with pytest.raises(ModelLoadError, match="'someorg/no-such-model' is not a local folder, and HF_HUB_OFFLINE is set while it is not in the local hub cache"):
        load_causal_lm(ModelConfig(name_or_path="someorg/no-such-model", device="cpu"))
    with pytest.raises(ModelLoadError, match="not in the local hub cache"):
        load_tokenizer(ModelConfig(name_or_path="someorg/no-such-model"))


def test_pickle_only_folder_is_refused_with_the_conversion(tmp_path, tiny_model):
    folder = tmp_path / "bin_only"
    folder.mkdir()
    tiny_model.config.save_pretrained(folder)
    torch.save(tiny_model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError) as err:
        load_causal_lm(ModelConfig(name_or_path=str(folder), device="cpu"))
    message = str(err.value)
    assert "pytorch_model.bin" in message and "use_safetensors=False).save_pretrained(" in message


# --------------------------------------------------------------------------- loading


def test_load_local_folder_in_fp32_on_cpu(tiny_model_dir, tiny_tokenizer):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir), device="auto" if not torch.cuda.is_available() else "cpu")
    model = load_causal_lm(cfg, for_training=False)
    assert next(model.parameters()).dtype == torch.float32
    assert next(model.parameters()).device == torch.device("cpu")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    batch = _batch(tiny_tokenizer)
    assert torch.equal(_logits(model, batch), _logits(_plain(tiny_model_dir), batch))

    trained = load_causal_lm(cfg, for_training=True)
    assert trained.training and all(p.requires_grad for p in trained.parameters())


def test_tokenizer_gets_eos_as_pad_when_it_has_none(tmp_path, tiny_tokenizer, tiny_model_dir):
    loaded = load_tokenizer(ModelConfig(name_or_path=str(tiny_model_dir)))
    assert loaded.pad_token == "<|pad|>" and loaded.chat_template == tiny_tokenizer.chat_template

    no_pad = copy.deepcopy(tiny_tokenizer)
    no_pad.pad_token = None
    no_pad.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(ModelConfig(name_or_path=str(tiny_model_dir), tokenizer=str(tmp_path / "tok")))
    assert loaded.pad_token == loaded.eos_token == "<|endoftext|>"


# --------------------------------------------------------------------------- LoRA


def _lora_cfg(**kw):
    return LoraConfig(enabled=True, r=4, alpha=8, **kw)


def _train_a_few_steps(model, batch, steps=3):
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    for _ in range(steps):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_lora_targets_only_the_listed_linears(tiny_model):
    all_linear = apply_lora(copy.deepcopy(tiny_model), _lora_cfg())
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in all_linear.named_parameters() if "lora_A" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    some = apply_lora(tiny_model, _lora_cfg(target_modules=["q_proj", "v_proj"]))
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in some.named_parameters() if "lora_A" in n}
    assert adapted == {"q_proj", "v_proj"}


def test_lora_train_export_merge_and_reference(tmp_path, tiny_model_dir, tiny_tokenizer):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir), device="cpu", lora=_lora_cfg())
    model = load_causal_lm(cfg)
    assert is_peft_model(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)

    batch = _batch(tiny_tokenizer)
    base_logits = _logits(_plain(tiny_model_dir), batch)
    _train_a_few_steps(model, batch)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    policy_logits = _logits(model, batch)
    assert not torch.allclose(policy_logits, base_logits, atol=1e-3)  # the adapter does something
    weights_before = {n: p.detach().clone() for n, p in model.named_parameters()}

    out = export_model(model, tiny_tokenizer, tmp_path / "final")
    exported = _plain(out)
    assert type(exported).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(_logits(exported, batch), policy_logits, atol=1e-5, rtol=0)

    # Export merged a copy: the training model keeps its adapter and its exact weights.
    assert is_peft_model(model)
    assert all(torch.equal(p, weights_before[n]) for n, p in model.named_parameters())
    assert torch.equal(_logits(model, batch), policy_logits)

    with disabled_adapter(model):
        torch.testing.assert_close(_logits(model, batch), base_logits, atol=1e-6, rtol=0)
    assert torch.equal(_logits(model, batch), policy_logits)  # switched back on afterwards
    with pytest.raises(TypeError, match="no reference policy"):
        with disabled_adapter(exported):
            pass

    # A saved adapter folder loads on top of its base (merged when not training it further).
    model.save_pretrained(tmp_path / "adapter")
    from_adapter = load_causal_lm(ModelConfig(name_or_path=str(tmp_path / "adapter"), device="cpu"), for_training=False)
    assert not is_peft_model(from_adapter)
    torch.testing.assert_close(_logits(from_adapter, batch), policy_logits, atol=1e-5, rtol=0)

    merged = merge_lora(model)
    assert not is_peft_model(merged)
    torch.testing.assert_close(_logits(merged, batch), policy_logits, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- export


@pytest.fixture()
def lively_model(tiny_tokenizer):
    """A random tiny Llama with larger weights, so greedy decoding does not repeat one token."""
    from posttrain.models.tiny import tiny_llama

    return tiny_llama(len(tiny_tokenizer), hidden_size=32, num_layers=2, num_heads=4, initializer_range=0.3).eval()


def test_export_is_a_plain_folder_that_generates_like_posttrain(tmp_path, lively_model, tiny_tokenizer):
    from transformers import AutoTokenizer

    from posttrain.generation import generate

    prompts = ["The quick brown fox", "What is the capital of Zorbia?", "Sort these words: pear,", "Add"]
    free = generate(lively_model, tiny_tokenizer, prompts[:1], max_new_tokens=8, stop_at_eos=False)[0]
    # A second stop token that the model does emit, and a repetition penalty from "the model's
    # authors": both must behave the same in posttrain and in plain transformers.
    stop = free.completion_ids[3]
    lively_model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, stop]
    lively_model.generation_config.repetition_penalty = 3.0
    ours = generate(lively_model, tiny_tokenizer, prompts, max_new_tokens=12)
    assert ours[0].finished and ours[0].completion_ids[-1] == stop

    out = export_model(lively_model, tiny_tokenizer, tmp_path / "final", extra_files={"README.md": "# tiny\n"})
    names = set(os.listdir(out))
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt"))]
    reloaded_tokenizer = AutoTokenizer.from_pretrained(out)
    assert reloaded_tokenizer.chat_template == tiny_tokenizer.chat_template
    reloaded = _plain(out).eval()
    for prompt, result in zip(prompts, ours):
        ids = reloaded_tokenizer(prompt, return_tensors="pt")
        sequence = reloaded.generate(**ids, max_new_tokens=12, do_sample=False)[0]
        assert sequence[ids["input_ids"].shape[1]:].tolist() == result.completion_ids


def test_export_replaces_atomically_and_survives_a_failure(tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    out = tmp_path / "final"
    export_model(tiny_model, tiny_tokenizer, out, extra_files={"note.txt": "first"})
    export_model(tiny_model, tiny_tokenizer, out, extra_files={"notes/run.txt": "second"})
    assert not (out / "note.txt").exists() and (out / "notes/run.txt").read_text() == "second"
    assert sorted(os.listdir(tmp_path)) == ["final"]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def crash(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(tiny_model), "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(tiny_model, tiny_tokenizer, out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(os.listdir(tmp_path)) == ["final"]

    with pytest.raises(ValueError, match="inside the export folder"):
        export_model(tiny_model, tiny_tokenizer, tmp_path / "other", extra_files={"../escape.txt": "x"})
    assert sorted(os.listdir(tmp_path)) == ["final"]


def test_export_puts_back_a_folder_left_aside_by_a_crash(tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    out = tmp_path / "final"
    export_model(tiny_model, tiny_tokenizer, out, extra_files={"note.txt": "old"})
    # A crash between the two renames leaves the old folder renamed aside and out missing.
    os.replace(out, tmp_path / ".final.old-deadbeef")
    (tmp_path / ".final.tmp-stale").mkdir()
    monkeypatch.setattr(type(tiny_model), "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError, match="boom"):
        export_model(tiny_model, tiny_tokenizer, out)
    assert sorted(os.listdir(tmp_path)) == ["final"] and (out / "note.txt").read_text() == "old"
    assert Path(out / "model.safetensors").exists()


def test_tokens_added_to_the_tokenizer_get_trainable_embeddings(tmp_path, tiny_model_dir, tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.add_tokens(["<|tool|>", "<|result|>"], special_tokens=True)
    new_ids = tokenizer.convert_tokens_to_ids(["<|tool|>", "<|result|>"])
    cfg = ModelConfig(name_or_path=str(tiny_model_dir), device="cpu", lora=_lora_cfg())
    model = load_causal_lm(cfg, tokenizer=tokenizer)
    assert model.config.vocab_size == len(tokenizer) == len(tiny_tokenizer) + 2

    batch = tokenizer(["<|tool|> Add 12 and 7 <|result|> 19"], return_tensors="pt")
    assert set(new_ids) <= set(batch["input_ids"][0].tolist())
    initial_rows = copy.deepcopy(model).merge_and_unload().get_input_embeddings().weight[new_ids].detach()
    _train_a_few_steps(model, batch)
    policy_logits = _logits(model, batch)
    exported = _plain(export_model(model, tokenizer, tmp_path / "final"))
    assert exported.get_input_embeddings().num_embeddings == len(tokenizer)
    torch.testing.assert_close(_logits(exported, batch), policy_logits, atol=1e-5, rtol=0)
    # The new rows were trained (and exported), not left where resizing put them.
    assert (exported.get_input_embeddings().weight[new_ids] - initial_rows).abs().max() > 1e-3
