"""Packed and shared-prefix attention equal plain transformers on every model family (issue 20).

posttrain packs examples into one row and lets sequences share their prompt; its attention
(``posttrain.models.attention.segment_attention``) must then give each token exactly what the model's own
attention gives it when the sequence runs alone: the sliding window (Mistral, Gemma 2/3, Phi-3 with an
8-token window here, so every example below is longer than it), Gemma 2's attention soft-capping, GPT-2's
and OPT's learned positions. Each test compares against plain ``transformers`` forwards of each sequence.
"""

from __future__ import annotations

import pytest
import torch

from families import FAMILIES, SPECS, build_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTHS = (23, 5, 17)
"""Example lengths: two longer than the families' 8-token sliding window, one shorter."""


def tiny_model(family: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    ids = build_tokenizer(family).get_vocab()
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(SPECS[family].config(len(ids), ids)).float().eval()


def random_examples(vocab: int, lengths=LENGTHS, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def plain_logps(model, ids: list[int]) -> torch.Tensor:
    """(n, V) log-probs of one sequence run alone through the model's own attention."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_loss_equals_plain_transformers(family):
    from types import SimpleNamespace

    from posttrain.data.packing import pack_examples
    from posttrain.models.attention import prepare_packing
    from posttrain.recipes.sft import TargetNLL

    model = tiny_model(family)
    vocab = model.get_input_embeddings().num_embeddings
    examples = random_examples(vocab)
    with torch.no_grad():  # transformers' own loss: mean over each sequence's n - 1 targets
        plain = sum(float(model(torch.tensor([e]), labels=torch.tensor([e])).loss) * (len(e) - 1) for e in examples)
        references = [plain_logps(model, e) for e in examples]
    assert prepare_packing(model, shared_prefix=False) is None
    packed = pack_examples([SimpleNamespace(input_ids=e, loss_mask=[True] * len(e)) for e in examples], 0)
    with torch.no_grad():
        nll = float(TargetNLL(model)(labels=packed.labels, **packed.model_inputs()))
        logps = torch.log_softmax(model(**packed.model_inputs()).logits[0].float(), -1)
    targets = sum(len(e) - 1 for e in examples)
    assert abs(nll / targets - plain / targets) < 1e-5, (family, nll / targets, plain / targets)
    for (start, end), i in zip(packed.example_spans[0], packed.example_index[0]):
        torch.testing.assert_close(logps[start:end], references[i], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_and_padded_batches_equal_plain_transformers(family):
    from posttrain.data.packing import pack_shared_prefix
    from posttrain.models.attention import prepare_packing

    model = tiny_model(family, seed=1)
    vocab = model.get_input_embeddings().num_embeddings
    prompt, *responses = random_examples(vocab, (14, 3, 11), seed=2)
    sequences = [prompt + r for r in responses]
    references = [plain_logps(model, s) for s in sequences]
    assert prepare_packing(model, shared_prefix=True) is None
    batch = pack_shared_prefix([sequences])
    with torch.no_grad():
        row = torch.log_softmax(model(**batch.model_inputs()).logits[0].float(), -1)
    for k, (seq, ref) in enumerate(zip(sequences, references)):
        own = (batch.sequence_ids[0] == k).nonzero().flatten()
        own = own[batch.position_ids[0, own] >= len(prompt)]  # the response's own columns
        torch.testing.assert_close(row[own], ref[len(prompt):], rtol=0, atol=1e-5)
    # A right-padded batch (attention mask, no position restarts) goes to the model's own attention.
    width = max(len(s) for s in sequences)
    ids = torch.tensor([s + [0] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    with torch.no_grad():
        padded = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    for k, (seq, ref) in enumerate(zip(sequences, references)):
        torch.testing.assert_close(padded[k, :len(seq)], ref, rtol=0, atol=1e-5)


def test_a_model_whose_attention_cannot_be_read_is_padded_with_a_message(capsys):
    from posttrain.config import load_config
    from posttrain.recipes.config import DPOConfig, SFTConfig
    from posttrain.recipes.dpo import prepare_attention as dpo_attention
    from posttrain.recipes.sft import prepare_attention as sft_attention

    model = tiny_model("llama3")
    model._supports_attention_backend = False  # as a model with its own hand-written attention
    sft_cfg = sft_attention(load_config(SFTConfig, None, ["packing=true"]), model)
    dpo_cfg = dpo_attention(load_config(DPOConfig, None, ["packing=true"]), model)
    assert not sft_cfg.packing and not dpo_cfg.packing
    out = capsys.readouterr().out
    assert out.count("does not route its attention through transformers' attention interface") == 2
    assert "padding batches instead" in out
