"""posttrain synth: teachers, the cache, each method's filters and output, a live OpenAI-compatible server
killed mid-run, and what each method's data teaches a model of the world."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from background import DATE, EVAL_N, SI_SIZE, SINGLE_TURN, SUMS, run_synth  # tests/background.py

from posttrain.config import load_config
from posttrain.evaluation.scoring import difference_se
from posttrain.synth.config import METHODS, SynthConfig

# --- the pieces ---------------------------------------------------------------------------------


def test_rouge_l_agrees_with_rouge_score():
    from rouge_score import rouge_scorer

    from posttrain.synth.similarity import rouge_l, rouge_tokens

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pairs = [("What is 47 + 8?", "What is 45 + 8?"), ("Reverse the letters: l a m p", "Spell it backwards: c a t"),
             ("Sort these numbers: 7, 2, 9", "Tell me: what is the favourite colour of Tavi Quell?"),
             ("Write a TL;DR of this story: a b c d", "a b c d e f"), ("", "anything")]
    for a, b in pairs:
        assert rouge_l(rouge_tokens(a), rouge_tokens(b)) == pytest.approx(scorer.score(a, b)["rougeL"].fmeasure)


def test_similarity_pool_keeps_only_instructions_unlike_every_kept_one():
    from posttrain.synth.similarity import SimilarityPool

    pool = SimilarityPool(0.7)
    assert pool.offer("What is the favourite colour of Tavi Quell?")
    assert not pool.offer("What is the favourite colour of Mira Dox?")  # 6 of 8 words shared: 0.75
    assert pool.offer("Reverse the letters: l a m p")
    assert not pool.offer("What is the favourite colour of Tavi Quell?")
    assert len(pool.kept) == 2


def test_instruction_lists_parse_and_the_papers_filters_name_their_reason():
    from posttrain.synth.prompts import parse_instruction_list
    from posttrain.synth.self_instruct import instruction_problem

    items, malformed = parse_instruction_list("9. Instruction: What is 4 + 5?\n10. What is 6 + 1?\n"
                                              "11. Instruction:\nsome chatter\n12 . Instruction: Sort 3, 1, 2 please")
    assert items == [(9, "What is 4 + 5?"), (11, ""), (12, "Sort 3, 1, 2 please")]
    assert malformed == ["10. What is 6 + 1?"]
    assert instruction_problem("", 3, 150) == "empty instruction"
    assert instruction_problem("Sort these", 3, 150) == "fewer than 3 words"
    assert instruction_problem("Describe the picture of a lamp.", 3, 150) == "needs images, files or browsing"
    assert instruction_problem("- Reverse these letters please", 3, 150) == "starts with punctuation"
    assert instruction_problem("Reverse the letters: l a m p", 3, 150) is None


def test_world_teacher_answers_reasons_follows_rules_near_and_forgets_them_far():
    import random

    from posttrain.synth.config import WorldTeacherStyle
    from posttrain.synth.prompts import STRATEGIES
    from posttrain.synth.world_teacher import UNKNOWN, WorldTeacher
    from posttrain.world.answers import exact_match, follows_rule
    from posttrain.world.tasks import task_examples

    perfect = WorldTeacher(WorldTeacherStyle(accuracy=1.0, cot_accuracy=1.0, rule_near=1.0, rule_far=0.0))
    rng = random.Random(0)
    [sum_] = task_examples(0, ["arithmetic"], "heldout", 1)
    assert perfect.answer(sum_.as_dicts(), rng) == sum_.answer
    worked = perfect.answer([{"role": "system", "content": STRATEGIES["step_by_step"]}, *sum_.as_dicts()], rng)
    assert worked == sum_.cot and exact_match(sum_, worked)
    assert perfect.answer([{"role": "user", "content": "What is the meaning of life?"}], rng) == UNKNOWN
    chats = task_examples(0, ["chat_rule"], "heldout", 20)  # every one asks its question on turn 2 or 3
    assert not any(follows_rule(c, perfect.answer(c.as_dicts(), rng)) for c in chats)
    attached = [[*c.as_dicts()[:-1], {"role": "user", "content": f"{c.as_dicts()[0]['content']}\n\n{c.question}"}]
                for c in chats]
    assert all(follows_rule(c, perfect.answer(a, rng)) for c, a in zip(chats, attached))


def test_world_teacher_writes_only_problems_of_the_train_split():
    import random

    from posttrain.synth.prompts import parse_instruction_list, self_instruct_prompt
    from posttrain.synth.world_teacher import WorldTeacher
    from posttrain.world.tasks import task_examples

    teacher = WorldTeacher()
    seeds = [e.question for e in task_examples(0, ["fact_lookup", "reverse", "sorting"], "train", 3)]
    written = []
    for k in range(20):
        items, _ = parse_instruction_list(teacher.write_instructions(self_instruct_prompt(seeds, 20), random.Random(k)))
        written += [teacher.find(text) for n, text in items if n > len(seeds) and text]
    found = [e for e in written if e is not None]
    assert len(found) > 150 and {e.family for e in found} == {"fact_lookup", "reverse", "sorting"}
    heldout = {e.question for e in task_examples(0, ["fact_lookup", "reverse", "sorting"], "heldout", 10**6)}
    assert not any(e.question in heldout for e in found)


def test_every_method_writes_records_the_readers_read_with_provenance(tmp_path):
    from posttrain.data.readers import read_records

    settings = {
        "self-instruct": ["world.examples=3", "world.families=[fact_lookup,reverse]", "self_instruct.instructions=12"],
        "evol-instruct": ["world.examples=6", "world.families=[fact_lookup,arithmetic]", "evol_instruct.rounds=2"],
        "self-chat": ["self_chat.conversations=6", "self_chat.turns=3"],
        "distill": ["world.examples=4", "world.families=[arithmetic]", "distill.strategy=step_by_step"],
        "gatt": ["world.examples=5", "world.families=[chat_rule]"],
    }
    assert set(settings) == set(METHODS)
    for method, overrides in settings.items():
        rows, report = run_synth(tmp_path, method, *overrides)
        records = read_records(tmp_path / f"{method}.jsonl").records
        assert len(records) == len(rows) == report["records"] > 0, method
        for record in records:
            assert record.kind == "conversation" and record.messages[-1].role == "assistant"
            meta = record.meta
            assert meta["method"] == method and meta["date"] == DATE and meta["license"] == "Apache-2.0"
            assert meta["teacher"].startswith("world-teacher") and meta["template"].startswith(method.split("-")[0])
        for stage in report["stages"].values():  # nothing vanishes: every item is kept or dropped with a reason
            assert stage["generated"] == stage["kept"] + sum(stage["dropped"].values())
    distilled = read_records(tmp_path / "distill.jsonl").records
    assert all(r.messages[0].role == "user" for r in distilled), "prompt erasure keeps no strategy prompt"
    chats = read_records(tmp_path / "self-chat.jsonl").records
    assert max(len(r.messages) for r in chats) == 6
    gatt = read_records(tmp_path / "gatt.jsonl").records
    assert all(r.meta["loss_on"] == "last_assistant" and r.messages[0].role == "system" for r in gatt)
    assert all(sum(m.content.count(r.meta["instruction"]) for m in r.messages) == 1 for r in gatt)


def test_a_rerun_comes_from_the_cache_and_writes_the_same_bytes(tmp_path):
    args = ["world.examples=3", "world.families=[reverse,sorting]", "self_instruct.instructions=10"]
    _, first = run_synth(tmp_path, "self-instruct", *args)
    data = (tmp_path / "self-instruct.jsonl").read_bytes()
    _, second = run_synth(tmp_path, "self-instruct", *args)
    assert first["requests_sent"] > 0 and first["cache_hits"] == 0
    assert second["requests_sent"] == 0 and second["cache_hits"] == first["requests_sent"]
    assert (tmp_path / "self-instruct.jsonl").read_bytes() == data


def test_malformed_lists_and_empty_answers_are_counted_and_dropped_with_their_reason(tmp_path, monkeypatch):
    from posttrain.synth.teachers import Completion
    from posttrain.synth.world_teacher import WorldTeacher

    reply = WorldTeacher.reply

    def blank_sums(self, messages, rng):  # a teacher that says nothing to sums (and is out of format at times)
        text = reply(self, messages, rng)
        return "" if " + " in messages[-1]["content"] and "Instruction" not in messages[-1]["content"] else text

    monkeypatch.setattr(WorldTeacher, "reply", blank_sums)
    rows, report = run_synth(tmp_path, "self-instruct", "world.examples=4", "world.families=[arithmetic,reverse]",
                             "self_instruct.instructions=30", "teacher.world.malformed=0.3")
    instructions, answers = report["stages"]["instructions"], report["stages"]["answers"]
    assert instructions["dropped"]["out of format"] > 0 and instructions["dropped"]["empty instruction"] > 0
    assert answers["dropped"]["empty answer"] > 0
    assert answers["kept"] == len(rows) == 30 - answers["dropped"]["empty answer"]
    assert all(r["messages"][1]["content"] for r in rows)
    assert Completion("x").finish_reason == "stop"


def test_per_record_loss_on_trains_only_the_last_turn_of_ghost_attention_data(tiny_tokenizer):
    from types import SimpleNamespace

    from posttrain.data.chat import tokenize_conversations
    from posttrain.data.records import Conversation, Message

    turns = [Message("system", "Answer in capitals."), Message("user", "a?"), Message("assistant", "A."),
             Message("user", "b?"), Message("assistant", "B.")]
    cfg = SimpleNamespace(loss_on="assistant", max_length=512, overflow="truncate")
    (both, last), _ = tokenize_conversations(tiny_tokenizer, [Conversation(turns), Conversation(
        turns, {"loss_on": "last_assistant"})], cfg)
    assert both.input_ids == last.input_ids and 0 < last.num_loss_tokens < both.num_loss_tokens


def test_synth_command_line(tmp_path):
    from typer.testing import CliRunner

    from posttrain.cli import _register, app

    _register()
    runner = CliRunner()
    result = runner.invoke(app, ["synth", "distill", f"output={tmp_path / 'd.jsonl'}", f"cache_dir={tmp_path}/c",
                                 "world.examples=2", "world.families=[reverse]", "progress=false"])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 2
    result = runner.invoke(app, ["synth", "distil"])
    assert result.exit_code == 2 and "unknown method 'distil'" in result.output
    result = runner.invoke(app, ["synth", "gatt", "teacher.kind=openai"])
    assert result.exit_code == 2 and "teacher.model" in result.output


def test_local_teacher_answers_as_posttrain_generation_does(tmp_path):
    from posttrain.generation import generate_chat
    from posttrain.synth.teachers import LocalTeacher, Request, Sampling
    from posttrain.world import base_model_path

    rows, report = run_synth(tmp_path, "distill", "teacher.kind=local", f"teacher.model={base_model_path()}",
                             "teacher.temperature=0", "teacher.max_tokens=24", "world.examples=3",
                             "world.families=[reverse,arithmetic]")
    answers = report["stages"]["answers"]
    assert answers["generated"] == 6 and len(rows) == answers["kept"]
    assert answers["kept"] + answers["dropped"].get("cut off at teacher.max_tokens", 0) == 6
    teacher = LocalTeacher(load_config(SynthConfig, None, [f"teacher.model={base_model_path()}"]).teacher)
    prompts = [[{"role": "user", "content": "What is 4 + 5?"}], [{"role": "user", "content": "Spell it backwards: c a t"}]]
    direct = generate_chat(teacher.model, teacher.tokenizer, prompts, max_new_tokens=24, temperature=0.0)
    requests = [Request.chat(p, Sampling(0.0, 1.0, 24)) for p in prompts]
    got = dict(teacher.generate(requests))
    assert [got[i].text for i in range(2)] == [o.text for o in direct]
    assert [got[i].finish_reason for i in range(2)] == ["stop" if o.finished else "length" for o in direct]


def test_openai_teacher_retries_rate_limits_and_server_errors_then_gives_up_with_a_clear_error():
    """A real HTTP server that answers 429, then 503, then a chat completion: the official client's
    backoff carries the request through; with fewer retries than failures the job stops, saying why."""
    from chat_server import chat_server  # tests/chat_server.py

    from posttrain.synth.config import TeacherConfig
    from posttrain.synth.teachers import OpenAITeacher, Request, Sampling, TeacherError

    statuses: list[int] = []

    def flaky(messages):
        statuses.append((429, 503, 200)[min(len(statuses) % 3, 2)])
        return statuses[-1], "hi" if statuses[-1] == 200 else "slow down"

    with chat_server(flaky) as url:
        request = Request.chat([{"role": "user", "content": "hello"}], Sampling())
        teacher = OpenAITeacher(TeacherConfig(kind="openai", model="m", base_url=url, max_retries=2))
        assert [c.text for _, c in teacher.generate([request])] == ["hi"]
        assert statuses == [429, 503, 200]
        statuses.clear()
        impatient = OpenAITeacher(TeacherConfig(kind="openai", model="m", base_url=url, max_retries=1))
        with pytest.raises(TeacherError, match="after 1 retries"):
            list(impatient.generate([request]))
        assert statuses == [429, 503]


# --- a live OpenAI-compatible server, killed mid-run ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int) -> subprocess.Popen:
    """`transformers serve <folder>` on 127.0.0.1, once its health check answers."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([str(Path(sys.executable).with_name("transformers")), "serve", str(model), "--host",
                               "127.0.0.1", "--port", str(port), "--device", "cpu"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return server
        except OSError:
            assert server.poll() is None, "transformers serve exited"
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGKILL)
    raise AssertionError("transformers serve did not come up in 120 s")


def test_live_server_killed_mid_run_resumes_from_the_cache_and_loses_nothing(world_sft, tmp_path):
    model, port, n = world_sft / "final", free_port(), 48
    command = [str(Path(sys.executable).with_name("posttrain")), "synth", "distill", "teacher.kind=openai",
               f"teacher.base_url=http://127.0.0.1:{port}/v1", f"teacher.model={model}", "teacher.max_retries=1",
               "teacher.timeout=10", "teacher.concurrency=2", "teacher.temperature=0", "teacher.max_tokens=200",
               "world.examples=24", "world.families=[reverse,arithmetic]", f"output={tmp_path / 'd.jsonl'}",
               f"cache_dir={tmp_path / 'cache'}", "progress=false", f"date={DATE}"]
    env = {**os.environ, "OPENAI_API_KEY": "local", "HF_HUB_OFFLINE": "1"}
    cached = lambda: len(list((tmp_path / "cache").glob("*/*.json")))  # noqa: E731
    server = start_server(model, port)
    try:
        job = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 120
        while cached() < 8 and job.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(server.pid, signal.SIGKILL)  # the server dies in the middle of the job
        server.wait()
        output = job.communicate(timeout=120)[0]
        assert job.returncode == 2, output
        assert "run the same command again to resume" in output and not (tmp_path / "d.jsonl").exists()
        before = cached()
        assert 8 <= before < n
        server = start_server(model, port)
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    report = json.loads((tmp_path / "d.report.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert report["cache_hits"] == before and report["requests_sent"] == n - before and cached() == n
    assert len(rows) == n and len({r["meta"]["source"] for r in rows}) == n  # every prompt once
    assert all(r["meta"]["teacher"] == f"openai:http://127.0.0.1:{port}/v1:{model}" for r in rows)
    assert sum(r["messages"][-1]["content"].endswith(".") for r in rows) > n // 2  # real answers of the model


# --- what the data teaches, in the world (data and models: the synth_world fixture, tests/background.py) ---

def exact_match(run: Path) -> dict[str, float]:
    results = json.loads((run / "eval" / "results.json").read_text())["results"]
    return {f: cell["zero_shot"]["accuracy"] for f, cell in results.items()}


def self_instruct_scores(synth_world) -> tuple[dict, dict, str]:
    from posttrain.world.tasks import TRAIN_FAMILIES

    report = json.loads((synth_world / "si" / "self-instruct.report.json").read_text())
    assert report["records"] == SI_SIZE and report["seed_tasks"] == 70  # chat_rule's 10 seeds are multi-turn
    assert report["seeds_skipped_multi_turn"] == 10
    assert report["stages"]["instructions"]["dropped"]["ROUGE-L >= 0.7 with a kept instruction"] > 0
    synthetic, demonstrated = exact_match(synth_world / "runs" / "si"), exact_match(synth_world / "runs" / "gold")
    table = "\n".join(f"{f:22s} self-instruct {synthetic[f]:.3f}  gold {demonstrated[f]:.3f}" for f in TRAIN_FAMILIES)
    print(f"\n{table}\nmeans over {SINGLE_TURN}: self-instruct {mean(synthetic, SINGLE_TURN):.3f}, gold "
          f"{mean(demonstrated, SINGLE_TURN):.3f}; over every trained family: {mean(synthetic, TRAIN_FAMILIES):.3f}, "
          f"{mean(demonstrated, TRAIN_FAMILIES):.3f}")
    return synthetic, demonstrated, table


def mean(scores: dict, families) -> float:
    return sum(scores[f] for f in families) / len(families)


def test_sft_on_self_instruct_data_reaches_80_percent_of_gold_on_the_single_turn_families(synth_world):
    """10 seed tasks per family, the simulated teacher, the paper's ROUGE-L filter at 0.7; against as many gold
    demonstrations of every trained family, trained and scored the same way; on the families whose tasks are
    one instruction, the kind self-instruct writes."""
    synthetic, demonstrated, table = self_instruct_scores(synth_world)
    assert mean(synthetic, SINGLE_TURN) >= 0.8 * mean(demonstrated, SINGLE_TURN), table


def test_sft_on_self_instruct_data_reaches_80_percent_of_gold_on_every_trained_family(synth_world):
    """The issue's measure: averaged over every trained family, chat_rule included (self-instruct writes it no
    data: 0% there against gold's 24%). 80.9% of gold on 2026-12-08, at the bar: the single-turn test beside
    it has more room."""
    from posttrain.world.tasks import TRAIN_FAMILIES

    synthetic, demonstrated, table = self_instruct_scores(synth_world)
    assert mean(synthetic, TRAIN_FAMILIES) >= 0.8 * mean(demonstrated, TRAIN_FAMILIES), table


def compliance(model: Path, n: int = 250) -> float:
    """Share of held-out chat_rule conversations (the question on turn 2 or 3) answered under the system rule."""
    from posttrain.generation import generate_chat, stop_at_end_of_turn
    from posttrain.models.config import ModelConfig
    from posttrain.models.loading import load_causal_lm, load_tokenizer
    from posttrain.world.answers import follows_rule
    from posttrain.world.tasks import task_examples

    cfg = ModelConfig(name_or_path=str(model))
    tokenizer = load_tokenizer(cfg)
    lm = load_causal_lm(cfg, for_training=False, tokenizer=tokenizer)
    stop_at_end_of_turn(lm, tokenizer)
    chats = task_examples(0, ["chat_rule"], "heldout", n)
    assert len(chats) == n and all(sum(m["role"] == "user" for m in c.messages) >= 2 for c in chats)
    outputs = generate_chat(lm, tokenizer, [c.as_dicts() for c in chats], max_new_tokens=64, batch_size=64)
    return sum(follows_rule(c, o.text) for c, o in zip(chats, outputs)) / n


def test_ghost_attention_data_keep_the_system_rule_on_later_turns(synth_world):
    """GAtt data against plain multi-turn data of the same size and dialogues, from the same teacher."""
    from posttrain.data.readers import read_records

    ghost, plain = (read_records(synth_world / name / "gatt.jsonl").records for name in ("ghost", "plain"))
    assert len(ghost) == len(plain) == 300
    assert [r.messages[1::2] for r in ghost] == [r.messages[1::2] for r in plain]  # same instruction and user turns
    n = 250
    g, p = (compliance(synth_world / "runs" / name / "final", n) for name in ("ghost", "plain"))
    print(f"\nsystem rule kept on turns 2 and 3 of {n} held-out chats: gatt {g:.3f}, plain {p:.3f} "
          f"(difference {g - p:.3f}, se {difference_se(g, n, p, n):.3f})")
    assert g - p > 2 * difference_se(g, n, p, n), f"rule kept on later turns: gatt {g:.3f}, plain {p:.3f}"
    card = (synth_world / "runs" / "ghost" / "final" / "README.md").read_text()  # provenance reaches the model card
    assert "license: apache-2.0" in card and "| Apache-2.0 | posttrain synth gatt, teacher world-teacher" in card
    assert "prompt templates: gatt/attached" in card and f"generated {DATE}" in card


def test_distillation_with_prompt_erasure_beats_plain_answers_on_sums(synth_world):
    """Orca 2: the teacher answers under a step-by-step strategy prompt that the record then drops,
    against the same teacher's answers without a strategy prompt; the student is asked bare questions."""
    erased, direct = ([json.loads(line) for line in (synth_world / name / "distill.jsonl").read_text().splitlines()]
                      for name in ("erased", "direct"))
    assert [r["messages"][:-1] for r in erased] == [r["messages"][:-1] for r in direct]  # the same bare prompts
    with_erasure, without = exact_match(synth_world / "runs" / "erased"), exact_match(synth_world / "runs" / "direct")
    print("\n" + ", ".join(f"{f}: erased {with_erasure[f]:.3f}, plain {without[f]:.3f}" for f in SUMS))
    for f in SUMS:
        assert with_erasure[f] - without[f] > 2 * difference_se(with_erasure[f], EVAL_N, without[f], EVAL_N), \
            f"{f}: erased {with_erasure[f]:.3f}, plain {without[f]:.3f}"
