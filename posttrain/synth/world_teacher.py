"""The embedded world's simulated teacher: a stand-in for a strong model, as the simulated annotators
stand in for people.

It reads only the messages it is sent, as any teacher would, and knows the world: every task of
every family, in every phrasing, with its right answer, its worked solution and its wrong answers
(:mod:`posttrain.world.tasks`). What it does with a request depends on what the request is:

- a world task (the last user turn): it answers it, right with probability ``accuracy`` (or
  ``cot_accuracy`` with its working shown, when a system or user turn asks for reasoning), refuses
  a harmful request with probability ``refusal``, and keeps a system rule (:data:`~posttrain.world.tasks.RULES`)
  with probability ``rule_near`` where the rule is stated in the current user turn or on the first
  turn, ``rule_far`` on later turns where only the system prompt states it, the forgetting that
  Llama 2's ghost attention repairs;
- a self-instruct list (:data:`~posttrain.synth.prompts.SELF_INSTRUCT_MARK`): it continues the list
  with new tasks of the families its examples come from, recombining the world's entities and
  templates (problems of the train split only, so nothing held out is ever written), a share of
  them ``near_copy`` of an example and ``malformed``;
- an Evol-Instruct rewrite: in depth it adds a constraint (a system rule) or asks for the
  reasoning, in breadth it writes a new task of the same family; ``evol_fail`` of the rewrites fail
  the way the paper's do (unchanged, or copying "#Rewritten Prompt#"); it can also judge two prompts
  equal or not;
- a self-chat user turn: it asks about the topic entity, one fact at a time, then writes [END];
- a judge prompt (:data:`~posttrain.synth.prompts.JUDGE`, RLAIF): it picks A or B by a Bradley-Terry
  draw on the two responses' gold totals (``judge_noise``), favouring the one shown first by
  ``position_bias``; a rating prompt (:data:`~posttrain.synth.prompts.RUBRIC`): 1 + 9 x gold, plus noise.

Every random choice is seeded by the request (messages, sampling, sample index), so the same
request always gets the same text, as a cache would give it.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from functools import cached_property, lru_cache
from typing import Iterator, Sequence

from posttrain.synth import prompts as P
from posttrain.synth.config import WorldTeacherStyle
from posttrain.synth.teachers import Completion, Request
from posttrain.world import entities as E
from posttrain.world.gold import gold_reward
from posttrain.world.tasks import FAMILY_SPECS, REFUSAL, RULES, TaskExample, make_tasks, split_keys

UNKNOWN = "I am not sure what you are asking."
"""The teacher's reply to a question that is no task of the world."""
REASONING_ASK = "Explain your reasoning step by step."
NEAR_COPY_PREFIXES = ("Please, ", "Now: ")
"""What the teacher puts before an example to write a near copy of it (and reads past when answering)."""
"""The sentence an in-depth rewrite adds to ask for more reasoning steps."""


def _question_key(text: str) -> str:
    return " ".join(text.split())


def _rule_in(text: str) -> tuple[str | None, str]:
    """(the rule a text states, the text without its statement)."""
    for name, rule in RULES.items():
        for phrasing in rule.phrasings:
            if phrasing in text:
                return name, _question_key(text.replace(phrasing, " "))
    return None, text


class WorldTeacher:
    """The simulated teacher of the world of ``seed`` (see the module docstring)."""

    def __init__(self, style: WorldTeacherStyle | None = None, seed: int = 0):
        self.style = style or WorldTeacherStyle()
        self.seed = seed
        digest = hashlib.sha256(json.dumps(vars(self.style), sort_keys=True).encode()).hexdigest()[:8]
        self.identity = f"world-teacher:seed{seed}:{digest}"

    @cached_property
    def world(self) -> E.World:
        return E.make_world(self.seed)

    @property
    def tasks(self) -> dict[str, TaskExample]:
        """Every task of every family and split, by its question (chat_rule asks fact_lookup's questions)."""
        return task_index(self.seed)

    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Completion]]:
        for i, request in enumerate(requests):
            rng = random.Random(request_seed(request))
            yield i, Completion(self.reply(request.as_dicts(), rng))

    def reply(self, messages: list[dict[str, str]], rng: random.Random) -> str:
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
        last = messages[-1]["content"]
        if P.SELF_INSTRUCT_MARK in last:
            return self.write_instructions(last, rng)
        if P.EVOL_DEPTH_MARK in last or P.EVOL_BREADTH_MARK in last:
            return self.evolve(last, rng)
        if P.EQUALITY_MARK in last:
            first, second = P.equality_prompts(last)
            return "Equal" if _question_key(first) == _question_key(second) else "Not Equal"
        if P.SELF_CHAT_USER_MARK in system:
            return self.play_user(P.topic_of(system), last, rng)
        if P.JUDGE_MARK in last and (parts := P.judged_parts(last)):
            return self.judge(*parts, rng)
        if P.RUBRIC_MARK in last and (rated := P.rated_parts(last)):
            return self.rate(*rated, rng)
        return self.answer(messages, rng)

    # --- answering ------------------------------------------------------------------------------

    def find(self, question: str) -> TaskExample | None:
        for prefix in NEAR_COPY_PREFIXES:
            question = question.removeprefix(prefix)
        return self.tasks.get(_question_key(question))

    def answer(self, messages: list[dict[str, str]], rng: random.Random) -> str:
        s = self.style
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        turn = sum(m["role"] == "user" for m in messages)
        question = messages[-1]["content"]
        reason = any(cue in (system + " " + question).lower() for cue in P.REASONING_CUES)
        question = _question_key(question.replace(REASONING_ASK, " "))
        rule, question = _rule_in(question)
        near = rule is not None or turn == 1
        rule = rule or _rule_in(system)[0]
        example = self.find(question)
        if example is None:
            return UNKNOWN
        if example.harmful:
            text = REFUSAL if rng.random() < s.refusal else example.meta["compliance"]
        elif rng.random() < (s.cot_accuracy if reason else s.accuracy):
            text = example.cot if reason and example.cot else example.answer
        else:
            text = rng.choice(example.meta["wrong_answers"])
        if rule and rng.random() < (s.rule_near if near else s.rule_far):
            text = RULES[rule].apply(text)
        return text

    # --- judging -------------------------------------------------------------------------------

    def judge(self, conversation: list[dict[str, str]], first: str, second: str, rng: random.Random) -> str:
        """"A" or "B": a Bradley-Terry draw on the two responses' gold totals (``judge_noise``), the first
        shown favoured by ``position_bias``; a conversation that is no world task gets no verdict."""
        example = conversation_index(self.seed).get(P.render_conversation(conversation))
        if example is None:
            return "I cannot tell which response is better."
        s = self.style
        delta = gold_reward(example, first).total - gold_reward(example, second).total + s.position_bias
        z = max(-700.0, min(700.0, delta / s.judge_noise))  # exp overflows past ~709
        return "A" if rng.random() < 1.0 / (1.0 + math.exp(-z)) else "B"

    def rate(self, conversation: list[dict[str, str]], response: str, rng: random.Random) -> str:
        """A 1-10 rating: 1 + 9 x the response's gold total, plus Gaussian noise of ``judge_noise`` x 9, rounded."""
        example = conversation_index(self.seed).get(P.render_conversation(conversation))
        if example is None:
            return "I cannot rate this."
        score = 1 + 9 * gold_reward(example, response).total + rng.gauss(0.0, 9 * self.style.judge_noise)
        return str(min(10, max(1, round(score))))

    # --- writing tasks ----------------------------------------------------------------------------

    def new_task(self, family: str, rng: random.Random) -> str:
        """A task of ``family`` on a problem of its train split, in a random phrasing."""
        spec = FAMILY_SPECS[family]
        keys = split_keys(family, self.world, self.seed)["train"]
        fields = spec.build(self.world, rng.choice(keys), rng.randrange(spec.num_templates), rng, keys)
        return fields["messages"][-1]["content"]

    def families_of(self, instructions: list[str]) -> list[str]:
        return [e.family for e in map(self.find, instructions) if e is not None and not e.meta.get("rule")]

    def write_instructions(self, prompt: str, rng: random.Random) -> str:
        s = self.style
        examples = [text for _, text in P.parse_instruction_list(prompt)[0]]
        wanted = int(prompt.split("List of ")[1].split(" tasks")[0]) if "List of " in prompt else 20
        families = self.families_of(examples) or ["fact_lookup"]
        lines = []
        for i in range(len(examples) + 1, wanted + 1):
            draw = rng.random()
            if draw < s.malformed:
                lines.append(rng.choice([f"{i}. Instruction:", f"{i}. {self.new_task(rng.choice(families), rng)}"]))
            elif draw < s.malformed + s.near_copy and examples:
                lines.append(f"{i}. Instruction: {rng.choice([*NEAR_COPY_PREFIXES, ''])}{rng.choice(examples)}")
            else:
                lines.append(f"{i}. Instruction: {self.new_task(rng.choice(families), rng)}")
        return "\n".join(lines)

    def evolve(self, prompt: str, rng: random.Random) -> str:
        given = P.given_prompt(prompt)
        if rng.random() < self.style.evol_fail:
            return rng.choice([given, f"#Rewritten Prompt#: {given}"])
        if P.EVOL_BREADTH_MARK in prompt:
            found = self.find(given)
            return self.new_task(found.family, rng) if found else given
        method = P.evol_method(prompt)
        if method == "constraints":
            return f"{given} {rng.choice(rng.choice(list(RULES.values())).phrasings)}"
        if method == "reasoning":
            return f"{given} {REASONING_ASK}"
        return given  # deepen / concretize: nothing to add to a world task, so no information gain

    # --- playing the user -----------------------------------------------------------------------

    def play_user(self, topic: str, transcript: str, rng: random.Random) -> str:
        asked = {_question_key(q) for q in P.asked_questions(transcript)}
        entity = next((e for e in self.world.entities if e.name == topic), None)
        facts = [[E.fact_question(e, a, v) for v in range(E.num_question_variants(e.kind, a))]
                 for e in ([entity] if entity else self.world.entities) for a in E.ATTRIBUTES[e.kind]]
        fresh = [f for f in facts if not asked & set(map(_question_key, f))]  # one question per fact
        if not fresh or (entity is None and len(asked) >= 3):
            return P.END
        return rng.choice(rng.choice(fresh))


@lru_cache(maxsize=4)
def every_task(seed: int) -> tuple[TaskExample, ...]:
    """Every task of every family and split of the world of ``seed``, in every phrasing."""
    world = E.make_world(seed)
    return tuple(example for family, spec in FAMILY_SPECS.items()
                 for split, keys in split_keys(family, world, seed).items()
                 for example in make_tasks(world, seed, family, split, len(keys) * spec.num_templates))


@lru_cache(maxsize=4)
def task_index(seed: int) -> dict[str, TaskExample]:
    """The tasks by their question (chat_rule asks fact_lookup's questions under a rule, so it has no
    entries of its own)."""
    index: dict[str, TaskExample] = {}
    for example in every_task(seed):
        if example.family != "chat_rule":
            index.setdefault(_question_key(example.question), example)
    return index


@lru_cache(maxsize=4)
def conversation_index(seed: int) -> dict[str, TaskExample]:
    """The tasks (chat_rule too) by their prompt as a judge prompt shows it."""
    index: dict[str, TaskExample] = {}
    for example in every_task(seed):
        index.setdefault(P.render_conversation(example.messages), example)
    return index


def request_seed(request: Request) -> str:
    """The seed of a request's random choices: a hash of everything the request says."""
    return hashlib.sha256(repr((request.messages, request.sampling)).encode()).hexdigest()
