"""Every recipe on every model family, from the command line (issue 20).

One cell per family x command: ``posttrain <command> --config configs/<recipe>/tiny.yaml key=value ...``
run in-process through typer's CliRunner for two steps on a tiny random model of the family
(``families.py``: its config class, special tokens, generation stop ids and verbatim chat template),
on data with single- and multi-turn conversations, with and without a system turn. Each cell then
checks what must hold whatever the weights:

- the run logged its steps with finite losses;
- where the policy starts as its own reference, the first step sees it so: DPO's loss is log 2, PPO's
  KL is 0 and the sampler's log-probs equal the trainer's (dropout or a stale cache would break them);
- packed (padding-free) and padded batches give the same losses and log-probs (sliding windows,
  soft-capping and attention implementations differ by family);
- ``run_dir/final`` loads with plain transformers (``AutoModelForCausalLM`` or
  ``AutoModelForSequenceClassification`` and ``AutoTokenizer``) with the family's chat template, bos,
  eos and generation stop ids intact (GPT-2, GPT-NeoX and OPT ship no template: posttrain trains them on
  raw text and exports them without one), and a reward model scores a conversation in plain
  transformers as posttrain scores it.

The cells, and which code path each exercises:

    sft        full fine-tuning (configs/sft/tiny.yaml), packed and padded, dropout off in both
    sft_lora   LoRA at the family's own dropout, merged on export
    reward     Bradley-Terry, packed and padded, data normalization (defaults: configs/reward/world.yaml adds
               a likelihood feature plain transformers cannot reproduce); then `posttrain eval` of it on pairs
    dpo        sigmoid DPO (configs/dpo/tiny.yaml): packed with the reference precomputed, sampled KL on
               held-out prompts; padded with a live reference, same log-probs
    ppo        PPO with a value head, LoRA policy (configs/ppo/tiny.yaml), a Python reward
    ppo_rm     PPO, full weights, the family's reward model (trained in its ``reward`` cell) as reward and critic
    rloo       RLOO, full weights, k=2
    grpo       GRPO, LoRA, k=2
    eval       `posttrain eval` of the base model (configs/eval/chat.yaml): chat prompting (generation and
               multiple choice), KL to itself

Run it alone with ``OMP_NUM_THREADS=1 pytest tests/test_families.py -p no:cacheprovider``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from families import family_models  # noqa: F401  (a session fixture, asked for by family_dirs)
from families import FAMILIES, SPECS, chat, prompt, write_chats, write_preferences, write_prompts
from posttrain.cli import _register, app

_register()
runner = CliRunner()
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STEPS = 2

pytestmark = pytest.mark.usefixtures("one_thread")


def short_answers(prompts, responses):
    """The Python reward of the ppo, rloo and grpo cells: 1 for an empty answer, falling with its length."""
    return [1.0 / (1.0 + len(r)) for r in responses]


# --- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def family_dirs(family_models) -> dict[str, Path]:
    return family_models


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("family-data")
    return {"chats": write_chats(folder / "chats.jsonl", 8),
            "pairs": write_preferences(folder / "pairs.jsonl", 8),
            "eval_pairs": write_preferences(folder / "eval_pairs.jsonl", 4, offset=100),
            "prompts": write_prompts(folder / "prompts.jsonl", 4)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("family-runs")


# --- running a command ----------------------------------------------------------------------------

def cli(command: str, *args: str, config: str | None = None) -> str:
    """``posttrain <command> [--config configs/<config>] args...`` in this process; its output. An
    exception inside the command is raised here with its traceback; a non-zero exit fails the test."""
    argv = [command, *(["--config", str(CONFIGS / config)] if config else []), *args]
    result = runner.invoke(app, argv)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    if result.exit_code != 0:
        lines = [line for line in result.output.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith(("error:", "config error:"))]
        error = (errors or lines or ["(no output)"])[-1]
        pytest.fail(f"posttrain {command} exited {result.exit_code}: {error}\n\nposttrain {' '.join(argv)}\n\n"
                    + "\n".join(lines[-20:]), pytrace=False)
    return result.output


TRAIN = [f"train.max_steps={STEPS}", "train.batch_size=4", "train.grad_accum=1", "train.warmup_steps=0",
         "train.save_every=0", "train.eval_every=0", "train.keep_checkpoints=0", "train.log_every=1",
         "train.tensorboard=false", "train.progress=false"]


SYSTEM_REFUSED = ("gemma", "gemma2")
"""Families whose chat template raises "System role not supported": their users merge the system text
into the first user turn (data.system=merge); other families keep their system turns."""


def system(family: str, key: str = "data.system") -> list[str]:
    return [f"{key}=merge"] if family in SYSTEM_REFUSED else []


def rl_args(model: Path, prompts: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"model.name_or_path={model}", f"data.train=[{prompts}]", f"train.run_dir={run_dir}", *TRAIN,
            *system(Path(model).name),
            "train.batch_size=2", "prompts_per_step=2", "max_new_tokens=6", "ppo_epochs=1", "eval_examples=0",
            "rewards=[test_families:short_answers]", *extra]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def series(run_dir: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in metrics(run_dir) if key in r}


def assert_steps(run_dir: Path, key: str = "loss") -> dict[int, float]:
    values = series(run_dir, key)
    assert sorted(values) == list(range(1, STEPS + 1)), f"{key} logged at steps {sorted(values)}"
    assert all(math.isfinite(v) for v in values.values()), values
    return values


# --- what an export must be -----------------------------------------------------------------------

def check_tokenizer(family: str, folder: Path):
    """The exported tokenizer, loaded by plain transformers: the family's template, bos and eos."""
    from transformers import AutoTokenizer

    spec = SPECS[family]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template == spec.chat_template, "the chat template changed on export"
    assert (tokenizer.bos_token, tokenizer.eos_token) == (spec.bos, spec.eos)
    return tokenizer


def check_causal_lm(family: str, folder: Path, base: Path | None = None):
    """run_dir/final loads with AutoModelForCausalLM + AutoTokenizer and answers a (chat) prompt."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    assert (folder / "model.safetensors").exists() and not (folder / "adapter_config.json").exists()
    tokenizer = check_tokenizer(family, folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == SPECS[family].model_type
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)
    if base is not None:  # token ids and stop ids travel with the weights
        want = AutoConfig.from_pretrained(base)
        assert (model.config.bos_token_id, model.config.eos_token_id) == (want.bos_token_id, want.eos_token_id)
        stops = GenerationConfig.from_pretrained(base).eos_token_id
        exported = model.generation_config.eos_token_id
        as_set = lambda ids: {ids} if isinstance(ids, int) else set(ids or ())  # noqa: E731
        assert as_set(stops) <= as_set(exported), f"generation stop ids {stops} became {exported}"
    if tokenizer.chat_template:
        ids = tokenizer.apply_chat_template(prompt(0), add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
    else:  # a base model: plain text
        ids = tokenizer(prompt(0)[-1]["content"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    return model


def logits(model_dir: Path, tokenizer) -> torch.Tensor:
    """(1, T, V) logits of plain text (no chat markers, which a base model may lack)."""
    from transformers import AutoModelForCausalLM

    ids = tokenizer("What is 3 plus 4? 3 plus 4 is 7.", return_tensors="pt")
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(model_dir)(**ids).logits


# --- the cells ------------------------------------------------------------------------------------

def sft_args(family_dirs, family: str, data, run_dir: Path, *extra: str) -> list[str]:
    return [f"model.name_or_path={family_dirs[family]}", f"data.train=[{data['chats']}]", f"train.run_dir={run_dir}",
            *TRAIN, "data.max_length=96", "samples=0", "world.eval_examples=0", *system(family), *extra]


@pytest.mark.parametrize("family", FAMILIES)
def test_sft(family, family_dirs, data, runs):
    # Dropout off in both runs (model.dropout=0: GPT-2's and OPT's 0.1 would draw other masks for other
    # shapes), so that packed and padded batches must give the same losses; sft_lora keeps the family's dropout.
    packed, padded = runs / family / "sft", runs / family / "sft_padded"
    cli("sft", *sft_args(family_dirs, family, data, packed, "model.dropout=0"), config="sft/tiny.yaml")
    cli("sft", *sft_args(family_dirs, family, data, padded, "model.dropout=0", "packing=false",
                         "group_by_length=false"), config="sft/tiny.yaml")
    a, b = assert_steps(packed), assert_steps(padded)
    assert [b[s] for s in a] == pytest.approx([a[s] for s in a], abs=1e-4), "packed and padded batches differ"
    check_causal_lm(family, packed / "final", family_dirs[family])


@pytest.mark.parametrize("family", FAMILIES)
def test_sft_lora(family, family_dirs, data, runs):
    run_dir = runs / family / "sft_lora"
    cli("sft", *sft_args(family_dirs, family, data, run_dir, "model.lora.enabled=true", "model.lora.r=4",
                         "train.lr=1e-2"), config="sft/tiny.yaml")
    assert_steps(run_dir)
    check_causal_lm(family, run_dir / "final", family_dirs[family])
    tokenizer = check_tokenizer(family, run_dir / "final")
    before, after = logits(family_dirs[family], tokenizer), logits(run_dir / "final", tokenizer)
    assert (after[..., :before.shape[-1]] - before).abs().max() > 1e-6, "the adapter was not merged into the export"


_REWARD_MODELS: dict[str, Path | BaseException] = {}


def reward_args(family_dirs, family: str, data, run_dir: Path, *extra: str) -> list[str]:
    return [f"model.name_or_path={family_dirs[family]}", f"data.train=[{data['pairs']}]",
            f"data.eval=[{data['eval_pairs']}]", f"train.run_dir={run_dir}", *TRAIN, "data.max_length=96",
            "train.lr=1e-3", "normalize=data", "norm_prompts=4", *system(family), *extra]


def reward_model(family: str, family_dirs, data, runs) -> Path:
    """The family's reward model, trained once (by whichever of its cells asks first); ``run_dir/final``."""
    if family not in _REWARD_MODELS:
        run_dir = runs / family / "reward"
        try:
            cli("reward", *reward_args(family_dirs, family, data, run_dir))
            _REWARD_MODELS[family] = run_dir / "final"
        except BaseException as e:
            _REWARD_MODELS[family] = e
            raise
    found = _REWARD_MODELS[family]
    if isinstance(found, BaseException):
        pytest.fail(f"needs the {family} reward model, whose training failed: {type(found).__name__}: {found}")
    return found


@pytest.mark.parametrize("family", FAMILIES)
def test_reward(family, family_dirs, data, runs):
    from transformers import AutoModelForSequenceClassification

    from posttrain.data.chat import render_prompt_response
    from posttrain.models.reward import RewardScorer

    final = reward_model(family, family_dirs, data, runs)
    packed = assert_steps(final.parent)
    padded_dir = runs / family / "reward_padded"
    cli("reward", *reward_args(family_dirs, family, data, padded_dir, "packing=false"))
    padded = assert_steps(padded_dir)
    assert [padded[s] for s in packed] == pytest.approx([packed[s] for s in packed], abs=1e-4), \
        "packed and padded batches differ"
    tokenizer = check_tokenizer(family, final)
    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    assert model.config.num_labels == 1
    # Plain transformers scores a conversation as posttrain does (the same token, the same number), and
    # posttrain's score does not depend on the batch (padding). No system turn: Gemma's template refuses one.
    conversations = [chat(0), chat(2)]  # one turn, two turns
    scorer = RewardScorer.from_pretrained(final, device="cpu")
    by_posttrain = scorer.score_conversations(conversations, normalize=False, batch_size=2)
    alone = torch.cat([scorer.score_conversations([c], normalize=False) for c in conversations])
    torch.testing.assert_close(by_posttrain, alone, rtol=0, atol=1e-5)
    for conversation, expected in zip(conversations, by_posttrain.tolist()):
        if tokenizer.chat_template:  # rendered by transformers alone
            ids = tokenizer.apply_chat_template(conversation, return_tensors="pt", return_dict=True)
        else:  # raw text, as posttrain joins it
            ids = {"input_ids": torch.tensor([render_prompt_response(scorer.tokenizer, conversation[:-1],
                                                                     conversation[-1:]).input_ids])}
        with torch.no_grad():
            score = model(**ids).logits[0, 0].item()
        assert score == pytest.approx(expected, abs=1e-5), "transformers and posttrain score different tokens"
    eval_dir = final.parent / "eval-pairs"
    cli("eval", f"model.name_or_path={final}", f"preference_data=[{data['eval_pairs']}]", "batch_size=4",
        f"run_dir={eval_dir}", *system(family, "system"), config="eval/reward-model.yaml")
    section = json.loads((eval_dir / "results.json").read_text())["reward_model"]["sets"][str(data["eval_pairs"])]
    assert section["pairs"] == 4 and 0 <= section["accuracy"] <= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_dpo(family, family_dirs, data, runs):
    run_dir, padded = runs / family / "dpo", runs / family / "dpo_padded"

    def dpo(run: Path, *extra: str) -> None:
        cli("dpo", f"model.name_or_path={family_dirs[family]}", f"data.train=[{data['pairs']}]",
            f"data.eval=[{data['eval_pairs']}]", f"train.run_dir={run}", *TRAIN, "data.max_length=96",
            "kl_prompts=2", "kl_max_tokens=4", *system(family), *extra, config="dpo/tiny.yaml")

    dpo(run_dir)  # packed, the reference's log-probs precomputed
    losses = assert_steps(run_dir)
    assert losses[1] == pytest.approx(math.log(2), abs=1e-4), "at the first step the policy is its own reference"
    assert series(run_dir, "kl_k3"), "no sampled KL to the reference on the held-out prompts"
    assert series(run_dir, "eval_loss"), "no held-out loss"
    check_causal_lm(family, run_dir / "final", family_dirs[family])
    dpo(padded, "packing=false", "reference=live", "kl_prompts=0")
    for key in ("loss", "logps/chosen", "logps/rejected"):
        a, b = series(run_dir, key), series(padded, key)
        assert [b[s] for s in a] == pytest.approx([a[s] for s in a], abs=1e-4), f"{key}: packed and padded differ"


def check_rl_run(run_dir: Path) -> list[dict]:
    records = metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["loss"]) for r in records)
    first = records[0]
    kl = first["kl"] if "kl" in first else first["grpo/kl_k3"]
    assert kl == pytest.approx(0.0, abs=1e-4), "the policy starts as its reference"
    assert max(r["rollout/logp_diff_max"] for r in records) < 1e-3, "sampler and trainer log-probs differ"
    return records


@pytest.mark.parametrize("family", FAMILIES)
def test_ppo(family, family_dirs, data, runs):
    run_dir = runs / family / "ppo"
    cli("ppo", *rl_args(family_dirs[family], data["prompts"], run_dir), config="ppo/tiny.yaml")
    records = check_rl_run(run_dir)
    assert "value/explained_variance" in records[0]
    # One update per step here, so step 1's update starts at the sampling policy: ratio 1 (no dropout).
    assert records[0]["policy/ratio"] == pytest.approx(1.0, abs=1e-5)
    check_causal_lm(family, run_dir / "final", family_dirs[family])


@pytest.mark.parametrize("family", FAMILIES)
def test_ppo_rm(family, family_dirs, data, runs):
    rm = reward_model(family, family_dirs, data, runs)
    run_dir = runs / family / "ppo_rm"
    cli("ppo", *rl_args(family_dirs[family], data["prompts"], run_dir, f"rewards=[{rm}]", f"critic={rm}",
                        "model.lora.enabled=false"), config="ppo/tiny.yaml")
    records = check_rl_run(run_dir)
    assert all(f"reward/{rm.name}" in r for r in records), "the reward model's scores are not logged"
    assert "value/explained_variance" in records[0]
    assert records[0]["policy/ratio"] == pytest.approx(1.0, abs=1e-5)
    check_causal_lm(family, run_dir / "final", family_dirs[family])


@pytest.mark.parametrize("family", FAMILIES)
def test_rloo(family, family_dirs, data, runs):
    run_dir = runs / family / "rloo"
    cli("ppo", *rl_args(family_dirs[family], data["prompts"], run_dir, "algorithm=rloo", "samples_per_prompt=2",
                        "model.lora.enabled=false"), config="ppo/tiny.yaml")
    records = check_rl_run(run_dir)
    assert "value/explained_variance" not in records[0]
    check_causal_lm(family, run_dir / "final", family_dirs[family])


@pytest.mark.parametrize("family", FAMILIES)
def test_grpo(family, family_dirs, data, runs):
    run_dir = runs / family / "grpo"
    cli("ppo", *rl_args(family_dirs[family], data["prompts"], run_dir, "algorithm=grpo", "samples_per_prompt=2"),
        config="ppo/tiny.yaml")
    records = check_rl_run(run_dir)
    assert "grpo/kl_k3" in records[0]
    check_causal_lm(family, run_dir / "final", family_dirs[family])


@pytest.mark.parametrize("family", FAMILIES)
def test_eval(family, family_dirs, runs):
    base = family_dirs[family]
    run_dir = runs / family / "eval"
    cli("eval", f"model.name_or_path={base}", f"run_dir={run_dir}", "families=[arithmetic]", "n_per_family=2",
        "strategies=[zero_shot, mc]", "shots=0", "batch_size=4", "max_new_tokens=8", f"reference={base}",
        "kl_prompts=2", "kl_max_tokens=4", config="eval/chat.yaml")
    results = json.loads((run_dir / "results.json").read_text())
    cells = results["results"]
    assert cells, "no prompting results"
    assert results["kl"]["responses"] == 2
    assert abs(results["kl"]["kl_k1"]) < 1e-3 and 0 <= results["kl"]["kl_k3"] < 1e-3, "KL of a model to itself"
