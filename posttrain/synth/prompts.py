"""The prompts each method sends its teacher, in the words of the papers that introduced them.

Any chat model reads these as instructions; the world's simulated teacher
(:mod:`posttrain.synth.world_teacher`) recognizes them by the marks defined here.
"""

from __future__ import annotations

import re

# --- self-instruct (Wang et al. 2022, as Alpaca simplified it) -------------------------------------

SELF_INSTRUCT_MARK = "diverse task instructions"
SELF_INSTRUCT = (
    "You are asked to come up with a set of {n} diverse task instructions. These task instructions will be given "
    "to a language model and we will evaluate the model for completing the instructions.\n\n"
    "Here are the requirements:\n"
    "1. Try not to repeat the verb for each instruction to maximize diversity.\n"
    "2. The language used for the instruction also should be diverse.\n"
    "3. The tasks should be answerable by a text-only model: no images, files or browsing.\n"
    "4. Each instruction should be one to three sentences, self-contained, in English.\n"
    "5. Write each as '<number>. Instruction: <text>' on one line.\n\n"
    "List of {n} tasks:\n{examples}")
SELF_INSTRUCT_ITEM = "{i}. Instruction: {text}"
_ITEM = re.compile(r"^\s*(\d+)\s*\.\s*Instruction:\s*(.*?)\s*$")
_NUMBERED = re.compile(r"^\s*\d+\s*[.)]")


def self_instruct_prompt(examples: list[str], n: int) -> str:
    listed = "\n".join(SELF_INSTRUCT_ITEM.format(i=i + 1, text=t) for i, t in enumerate(examples))
    return SELF_INSTRUCT.format(n=n, examples=listed)


def parse_instruction_list(text: str) -> tuple[list[tuple[int, str]], list[str]]:
    """(number, instruction) of each well-formed item, and the numbered lines that are out of format."""
    items, malformed = [], []
    for line in text.splitlines():
        match = _ITEM.match(line)
        if match:
            items.append((int(match.group(1)), match.group(2)))
        elif _NUMBERED.match(line):
            malformed.append(line)
    return items, malformed


# --- Evol-Instruct (Xu et al. 2023, WizardLM; the prompts of its appendix) -----------------------------

EVOL_DEPTH_MARK = "act as a Prompt Rewriter"
EVOL_BREADTH_MARK = "act as a Prompt Creator"
EVOL_DEPTH = (
    "I want you act as a Prompt Rewriter.\n"
    "Your objective is to rewrite a given prompt into a more complex version to make those famous AI systems "
    "(e.g., ChatGPT and GPT4) a bit harder to handle.\n"
    "But the rewritten prompt must be reasonable and must be understood and responded by humans.\n"
    "Your rewriting cannot omit the non-text parts such as the table and code in #The Given Prompt#:. Also, "
    "please do not omit the input in #The Given Prompt#.\n"
    "You SHOULD complicate the given prompt using the following method:\n{method}\n"
    "You should try your best not to make the #Rewritten Prompt# become verbose, #Rewritten Prompt# can only add "
    "10 to 20 words into #The Given Prompt#.\n"
    "'#The Given Prompt#', '#Rewritten Prompt#', 'given prompt' and 'rewritten prompt' are not allowed to appear "
    "in #Rewritten Prompt#\n"
    "#The Given Prompt#:\n{prompt}\n#Rewritten Prompt#:\n")
EVOL_METHODS = {
    "constraints": "Please add one more constraints/requirements into #The Given Prompt#'",
    "deepen": "If #The Given Prompt# contains inquiries about certain issues, the depth and breadth of the inquiry "
              "can be increased.",
    "concretize": "Please replace general concepts with more specific concepts.",
    "reasoning": "If #The Given Prompt# can be solved with just a few simple thinking processes, you can rewrite it "
                 "to explicitly request multiple-step reasoning.",
}
EVOL_BREADTH = (
    "I want you act as a Prompt Creator.\n"
    "Your goal is to draw inspiration from the #Given Prompt# to create a brand new prompt.\n"
    "This new prompt should belong to the same domain as the #Given Prompt# but be even more rare.\n"
    "The LENGTH and complexity of the #Created Prompt# should be similar to that of the #Given Prompt#.\n"
    "The #Created Prompt# must be reasonable and must be understood and responded by humans.\n"
    "'#Given Prompt#', '#Created Prompt#', 'given prompt' and 'created prompt' are not allowed to appear in "
    "#Created Prompt#\n"
    "#Given Prompt#:\n{prompt}\n#Created Prompt#:\n")
EQUALITY_MARK = "do you think they are equal to each other"
EQUALITY = (
    "Here are two Instructions to ChatGPT AI, do you think they are equal to each other, which meet the following "
    "requirements:\n1. They have same constraints and requirments.\n2. They have same depth and breadth of the "
    "inquiry.\nThe First Prompt: {first}\nThe Second Prompt: {second}\n"
    "Your Judgement (Just answer: Equal or Not Equal. No need to explain the reason.):")
EVOL_LEAKS = ("given prompt", "rewritten prompt", "created prompt", "#rewritten prompt#", "#created prompt#")
"""Elimination rule 4: an evolved prompt that copies the rewriting prompt's own words."""


def given_prompt(text: str) -> str:
    """The prompt an Evol-Instruct request rewrites (between its #...Given Prompt#: and #...Prompt#: lines)."""
    match = re.search(r"#(?:The )?Given Prompt#:\n(.*)\n#(?:Rewritten|Created) Prompt#:", text, re.S)
    return match.group(1) if match else ""


def evol_method(text: str) -> str:
    """Which in-depth method a rewriting request asks for ('' when none is recognized)."""
    return next((name for name, line in EVOL_METHODS.items() if line in text), "")


def equality_prompts(text: str) -> tuple[str, str]:
    match = re.search(r"The First Prompt: (.*)\nThe Second Prompt: (.*)\nYour Judgement", text, re.S)
    return (match.group(1), match.group(2)) if match else ("", "")


# --- self-chat (Baize, UltraChat) ---------------------------------------------------------------------

SELF_CHAT_USER_MARK = "You are role-playing the user"
SELF_CHAT_USER = (
    "You are role-playing the user in a conversation with an AI assistant. The topic: {topic}.\n"
    "Ask one question at a time, as a curious person would, and do not repeat a question. Write only the user's "
    "next message. When the topic is exhausted, write [END].")
SELF_CHAT_TRANSCRIPT = "The conversation so far:\n{transcript}\n\nWrite the user's next message."
END = "[END]"


def transcript(messages: list[dict[str, str]]) -> str:
    if not messages:
        return "(nothing yet)"
    return "\n".join(f"[{m['role'].capitalize()}] {m['content']}" for m in messages)


def topic_of(system: str) -> str:
    match = re.search(r"The topic: (.*?)\.\n", system)
    return match.group(1) if match else ""


def asked_questions(text: str) -> list[str]:
    """The user turns of a self-chat transcript."""
    return [line[len("[User] "):] for line in text.splitlines() if line.startswith("[User] ")]


# --- distillation strategies (Orca 2's "cautious reasoning": the system prompt picks the strategy) ----

STRATEGIES = {
    "step_by_step": "Think step by step and show your working, then end with 'So the answer is ...'.",
    "recall_then_answer": "First recall the facts you need, step by step, then give the answer.",
    "direct": "Answer directly in one sentence, without explanation.",
}
REASONING_CUES = ("step by step", "recall the facts")
"""Words in a system or user turn that ask for the working (the simulated teacher shows it on them)."""


def strategy_prompt(strategy: str) -> str:
    """The system prompt a distill.strategy names ('' for none; any other text is used as it is)."""
    return STRATEGIES.get(strategy, strategy)


# --- pairwise judging (RLAIF: Bai et al. 2022; Lee et al. 2023), asked in both orders -------------

JUDGE_MARK = "[Response A]"
JUDGE = (
    "Compare two responses to the conversation below. Which one is better: correct, helpful, harmless, concise, "
    "and following every instruction the conversation gives?\n\n"
    "[Conversation]\n{conversation}\n\n[Response A]\n{a}\n\n[Response B]\n{b}\n\n"
    "Answer with one letter: A or B.")
_ROLE_LINE = re.compile(r"^(System|User|Assistant): ", re.M)


def render_conversation(messages: list[dict[str, str]]) -> str:
    """``Role: text`` blocks, one per message (newlines inside a message kept)."""
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def parse_conversation(text: str) -> list[dict[str, str]]:
    """The messages :func:`render_conversation` wrote."""
    cuts = list(_ROLE_LINE.finditer(text))
    return [{"role": m.group(1).lower(), "content": text[m.end(): cuts[k + 1].start() - 1 if k + 1 < len(cuts) else None]}
            for k, m in enumerate(cuts)]


def judged_parts(text: str) -> tuple[list[dict[str, str]], str, str] | None:
    """(conversation, response A, response B) of a judge prompt made from :data:`JUDGE`, or None."""
    match = re.search(r"\[Conversation\]\n(.*)\n\n\[Response A\]\n(.*)\n\n\[Response B\]\n(.*)\n\nAnswer with", text, re.S)
    return (parse_conversation(match.group(1)), match.group(2), match.group(3)) if match else None


def verdict(text: str) -> int | None:
    """0 when a judge's reply picks response A, 1 for B, None when it picks neither clearly."""
    words = re.findall(r"\b(?:Response )?([AB])\b", text.strip())
    return {"A": 0, "B": 1}[words[0]] if words and len(set(words)) == 1 else None


# --- rating one response against a rubric (pointwise AI feedback) --------------------------------------

RUBRIC_MARK = "[Response to rate]"
RUBRIC = ("Rate the response to the conversation below from 1 (worst) to 10 (best) by this rubric: {rubric}\n\n"
          "[Conversation]\n{conversation}\n\n[Response to rate]\n{response}\n\nAnswer with the number only.")
DEFAULT_RUBRIC = ("correct and helpful first, then harmless (it refuses harmful requests), then following every "
                  "instruction the conversation gives, then concise.")


def rated_parts(text: str) -> tuple[list[dict[str, str]], str] | None:
    """(conversation, response) of a rating prompt made from :data:`RUBRIC`, or None."""
    match = re.search(r"\[Conversation\]\n(.*)\n\n\[Response to rate\]\n(.*)\n\nAnswer with the number", text, re.S)
    return (parse_conversation(match.group(1)), match.group(2)) if match else None


def rating(text: str) -> int | None:
    """The 1-10 rating a reply gives (its first number, if in range), else None."""
    match = re.search(r"\b(10|[1-9])\b", text)
    return int(match.group(1)) if match else None
