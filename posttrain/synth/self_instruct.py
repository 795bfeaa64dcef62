"""Self-instruct (Wang et al. 2022), as Alpaca ran it: from a few seed tasks, the teacher writes new
instructions, a filter keeps only those unlike every instruction kept so far, and the teacher answers them.

Each generation prompt shows ``in_prompt`` instructions (``machine_in_prompt`` of them generated
earlier, the rest seeds) and asks for a list of ``per_request``; the teacher continues it. Every new
item passes the paper's filters, each drop counted with its reason: out of format, too short or too
long, needing images or files, starting with punctuation or a non-English character, and ROUGE-L
at or above ``similarity`` with any instruction kept so far (seeds included). Then each kept
instruction is answered; empty or cut-off answers are dropped.
"""

from __future__ import annotations

import random

from posttrain.errors import UserError
from posttrain.synth.common import Provenance, Seed, usable_answer
from posttrain.synth.config import SynthConfig
from posttrain.synth.prompts import parse_instruction_list, self_instruct_prompt
from posttrain.synth.report import Stage, SynthReport
from posttrain.synth.similarity import SimilarityPool, rouge_tokens
from posttrain.synth.teachers import Teaching

UNSUITABLE = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
              "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
"""Words that mark a task a text-only model cannot do (the paper's list)."""


def instruction_problem(text: str, min_words: int, max_words: int) -> str | None:
    """Why an instruction is unusable by the paper's rules (None when it is usable)."""
    words = text.split()
    if not words:
        return "empty instruction"
    if len(words) < min_words:
        return f"fewer than {min_words} words"
    if len(words) > max_words:
        return f"more than {max_words} words"
    low = f" {text.lower()} "
    if any(f" {w} " in low for w in UNSUITABLE):
        return "needs images, files or browsing"
    if low.strip().startswith("write a program"):
        return "asks for a program"
    if not text[0].isalnum():
        return "starts with punctuation"
    if not text[0].isascii():
        return "not English"
    return None


def generate_instructions(cfg: SynthConfig, teacher: Teaching, seeds: list[str], stage: Stage,
                          report: SynthReport) -> list[str]:
    """New instructions, filtered, until cfg.self_instruct.instructions are kept or max_requests are sent."""
    si = cfg.self_instruct
    rng = random.Random(f"self-instruct:{cfg.seed}")
    pool = SimilarityPool(si.similarity)
    pool.kept += [rouge_tokens(text) for text in seeds]  # new instructions must differ from the seeds too
    machine: list[str] = []
    sent = 0
    while len(machine) < si.instructions and sent < si.max_requests:
        batch = min(si.requests_per_round, si.max_requests - sent)
        prompts, shown = [], []
        for _ in range(batch):
            k = min(si.machine_in_prompt, len(machine))
            examples = rng.sample(seeds, min(si.in_prompt - k, len(seeds))) + rng.sample(machine, k)
            prompts.append([{"role": "user", "content": self_instruct_prompt(examples, si.per_request)}])
            shown.append(len(examples))
        answers = teacher.ask(prompts, f"instructions ({len(machine)}/{si.instructions})",
                              samples=range(sent, sent + batch))
        sent += batch
        for echoed, completion in zip(shown, answers):
            items, malformed = parse_instruction_list(completion.text)
            for line in malformed:
                stage.drop("out of format", line)
            for number, text in items:
                if number <= echoed:  # the teacher repeated an example
                    continue
                problem = instruction_problem(text, si.min_words, si.max_words)
                if problem is None and len(machine) >= si.instructions:
                    problem = "beyond the number asked for"
                if problem is None and not pool.offer(text):
                    problem = f"ROUGE-L >= {si.similarity} with a kept instruction"
                if problem:
                    stage.drop(problem, text)
                else:
                    stage.keep()
                    machine.append(text)
    report.extra["generation_requests"] = sent
    if len(machine) < si.instructions:
        report.extra["stopped"] = (f"self_instruct.max_requests={si.max_requests} reached with {len(machine)} of "
                                   f"{si.instructions} instructions kept")
    return machine


def self_instruct(cfg: SynthConfig, teacher: Teaching, seeds: list[Seed], report: SynthReport,
                  stamp: Provenance) -> list:
    texts = [s.instruction for s in seeds if s.instruction]
    if not texts:
        raise UserError("self-instruct: the inputs hold no single-turn instruction to use as a seed task")
    report.extra["seed_tasks"] = len(texts)
    skipped = len(seeds) - len(texts)
    if skipped:
        report.extra["seeds_skipped_multi_turn"] = skipped
    instructions = generate_instructions(cfg, teacher, texts, report.stage("instructions"), report)
    stage = report.stage("answers")
    records = []
    for text, completion in zip(instructions, teacher.ask([[{"role": "user", "content": text}] for text in instructions],
                                                           "answers")):
        answer = usable_answer(completion, stage, text)
        if answer is None:
            continue
        stage.keep()
        records.append(stamp.record([{"role": "user", "content": text}, {"role": "assistant", "content": answer}],
                                    "self-instruct/alpaca", "generated"))
    return records
