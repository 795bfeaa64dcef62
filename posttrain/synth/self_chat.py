"""Self-chat (Baize, Xu et al. 2023; UltraChat, Ding et al. 2023): the teacher plays both sides.

From a seed topic, the teacher as the user (a role-play system prompt and the transcript so far)
writes the next question; the teacher as the assistant answers it; ``turns`` times, or until the
user writes [END]. A user turn that is empty or repeats an earlier one ends the conversation there;
a conversation without one full exchange, or with an unusable answer, is dropped and counted.
"""

from __future__ import annotations

from posttrain.synth.common import Provenance, Seed, usable_answer
from posttrain.synth.config import SynthConfig
from posttrain.synth.prompts import END, SELF_CHAT_TRANSCRIPT, SELF_CHAT_USER, transcript
from posttrain.synth.report import SynthReport
from posttrain.synth.teachers import Teaching


def topics(cfg: SynthConfig) -> list[str]:
    if cfg.self_chat.topics:
        return list(cfg.self_chat.topics)
    from posttrain.world.entities import make_world

    return [e.name for e in make_world(cfg.world.seed).entities]


def user_prompt(topic: str, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"role": "system", "content": SELF_CHAT_USER.format(topic=topic)},
            {"role": "user", "content": SELF_CHAT_TRANSCRIPT.format(transcript=transcript(messages))}]


def self_chat(cfg: SynthConfig, teacher: Teaching, seeds: list[Seed], report: SynthReport,
              stamp: Provenance) -> list:
    sc = cfg.self_chat
    subjects = topics(cfg)
    chats = [(subjects[i % len(subjects)], []) for i in range(sc.conversations)]
    open_ = list(range(len(chats)))
    users, assistants, whole = report.stage("user turns"), report.stage("assistant turns"), report.stage("conversations")
    failed: set[int] = set()
    for turn in range(sc.turns):
        questions = teacher.ask([user_prompt(*chats[i]) for i in open_], f"user turn {turn + 1}", samples=open_)
        asking = []
        for i, completion in zip(open_, questions):
            text = completion.text.strip()
            earlier = {m["content"] for m in chats[i][1] if m["role"] == "user"}
            if END in text or not text or text in earlier:
                reason = "the user ended the chat" if END in text else ("empty" if not text else "repeats a question")
                users.drop(reason, text)
                continue
            users.keep()
            chats[i][1].append({"role": "user", "content": text})
            asking.append(i)
        for i, completion in zip(asking, teacher.ask([chats[i][1] for i in asking], f"assistant turn {turn + 1}")):
            answer = usable_answer(completion, assistants, chats[i][1][-1]["content"])
            if answer is None:
                failed.add(i)
                continue
            assistants.keep()
            chats[i][1].append({"role": "assistant", "content": answer})
        open_ = [i for i in asking if i not in failed]
    records = []
    for i, (topic, messages) in enumerate(chats):
        if i in failed:
            whole.drop("an answer was unusable", topic)
        elif not messages:
            whole.drop("no full exchange", topic)
        else:
            whole.keep()
            records.append(stamp.record(messages, "self-chat/baize", f"topic:{topic}", topic=topic,
                                        turns=len(messages) // 2))
    return records
