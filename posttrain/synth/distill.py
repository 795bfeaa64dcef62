"""Distillation (Vicuna, OpenHermes, Orca 2): the teacher answers given prompts.

With ``strategy`` the teacher answers under a system prompt that says how to reason (step by step,
recall then answer, direct). With ``erase`` (Orca 2's prompt erasure) that system prompt is used to
generate and dropped from the training record: the student sees the bare question and the careful
answer, and so learns to reason without being told to.
"""

from __future__ import annotations

from posttrain.synth.common import Provenance, Seed, usable_answer
from posttrain.synth.config import SynthConfig
from posttrain.synth.prompts import strategy_prompt
from posttrain.synth.report import SynthReport
from posttrain.synth.teachers import Teaching


def with_system(messages: list[dict[str, str]], system: str) -> list[dict[str, str]]:
    """``messages`` answered under ``system``: put before an existing system message's text, or as one."""
    if not system:
        return messages
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{system}\n\n{messages[0]['content']}"}, *messages[1:]]
    return [{"role": "system", "content": system}, *messages]


def distill(cfg: SynthConfig, teacher: Teaching, seeds: list[Seed], report: SynthReport, stamp: Provenance) -> list:
    d = cfg.distill
    system = strategy_prompt(d.strategy)
    erased = bool(system) and d.erase
    template = f"distill/{d.strategy or 'plain'}" + ("+erased" if erased else "")
    stage = report.stage("answers")
    records = []
    for sample in range(d.samples):
        asked = [with_system(s.messages, system) for s in seeds]
        for seed, prompt, completion in zip(seeds, asked, teacher.ask(asked, f"answers (sample {sample})", sample)):
            answer = usable_answer(completion, stage, seed.id)
            if answer is None:
                continue
            stage.keep()
            kept = seed.messages if erased else prompt
            records.append(stamp.record([*kept, {"role": "assistant", "content": answer}], template, seed.id,
                                        strategy=d.strategy, prompt_erased=erased))
    return records
