"""Text formats shared by the world's pretraining corpus and its tasks, written once.

The base model only learns what its corpus shows, and the prototype found that an answer
tokenized differently from pretraining text loses what was learned. So the tasks and the corpus
render questions, answers and worked solutions with the same functions, and these rules hold:

- **Q/A blocks** are ``"Q: <question>\\nA: <answer>"``; blocks in one document are separated by a
  blank line. The answer is one line and follows ``"A: "`` with exactly one space; a few-shot prompt
  therefore ends with ``"A:"`` (no trailing space) and the model continues with ``" <answer>"``.
  Generation may stop at the first newline.
- **Answers**: a fact is answered by its canonical sentence (``entities.fact_sentence``: "Tavi Quell
  lives in Zorbia.") or, in short-answer documents, by the bare value ("Zorbia").
- **Numbers** are written in digits; the tokenizer makes every digit its own token.
- **Addition** is worked digit by digit, ones first, on one line (:func:`addition_steps`):
  ``"Ones: 3 + 8 = 11, write 1, carry 1. Tens: 2 + 4 + 1 = 7, write 7, carry 0. So 23 + 48 = 71."``
  Sums of several numbers add left to right (:func:`sum_steps`).
- **Strings** are handled letter by letter, letters separated by single spaces (:func:`spell`):
  "lamp" is ``"l a m p"``, in capitals ``"L A M P"``, backwards ``"p m a l"``.
- **Lists** are comma-separated: ``"apple, fig, pear"``.
- **Chain of thought** answers end with ``"So the answer is <answer>."`` (:func:`final_answer`).
- **Chat transcripts** in the corpus are ChatML without its special tokens: each turn is the role
  on its own line, then the content, so the content starts a line exactly as it does after
  ``<|im_start|>assistant\\n`` in the chat template.
"""

from __future__ import annotations

PLACES = ("Ones", "Tens", "Hundreds", "Thousands", "Ten-thousands")
"""Names of digit positions, ones first, as the addition scratchpad writes them."""

COT_TRIGGER = "Let's think step by step."
"""Zero-shot chain-of-thought trigger (Kojima et al. 2022); worked answers in the corpus sometimes open with it."""

ANSWER_PREFIX = "So the answer is "
"""Start of the last sentence of every chain-of-thought answer."""


def qa_block(question: str, answer: str) -> str:
    """One forum-style question and its one-line answer: "Q: ...\\nA: ..."."""
    return f"Q: {question}\nA: {answer}"


def qa_prompt(shots: list[tuple[str, str]], question: str) -> str:
    """A few-shot prompt: solved Q/A blocks, then the question, ending with "A:" for the model to continue."""
    blocks = [qa_block(q, a) for q, a in shots] + [f"Q: {question}\nA:"]
    return "\n\n".join(blocks)


def final_answer(answer: str) -> str:
    """The closing sentence of a chain-of-thought answer: "So the answer is 71."."""
    return f"{ANSWER_PREFIX}{answer}."


def addition_question(numbers: list[int]) -> str:
    """"What is 23 + 48?"."""
    return f"What is {' + '.join(str(n) for n in numbers)}?"


def addition_steps(a: int, b: int) -> str:
    """Column addition of two non-negative integers, ones first, on one line.

    ``addition_steps(23, 48)`` is "Ones: 3 + 8 = 11, write 1, carry 1. Tens: 2 + 4 + 1 = 7, write 7,
    carry 0. So 23 + 48 = 71." A shorter number is padded with 0 digits; a final carry gets its own
    step ("Hundreds: carry 1, write 1.").
    """
    if a < 0 or b < 0:
        raise ValueError(f"addition_steps adds non-negative integers, got {a} and {b}")
    da, db = str(a)[::-1], str(b)[::-1]
    width = max(len(da), len(db))
    if width >= len(PLACES):
        raise ValueError(f"addition_steps handles at most {len(PLACES) - 1} digits, got {a} + {b}")
    steps, carry = [], 0
    for i in range(width):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        terms = f"{x} + {y}" + (f" + {carry}" if i > 0 else "")
        steps.append(f"{PLACES[i]}: {terms} = {total}, write {total % 10}, carry {total // 10}.")
        carry = total // 10
    if carry:
        steps.append(f"{PLACES[width]}: carry {carry}, write {carry}.")
    steps.append(f"So {a} + {b} = {a + b}.")
    return " ".join(steps)


def sum_steps(numbers: list[int]) -> str:
    """Worked sum of two or more numbers, left to right, ending with :func:`final_answer`."""
    if len(numbers) < 2:
        raise ValueError(f"sum_steps needs at least two numbers, got {numbers}")
    if len(numbers) == 2:
        return f"{addition_steps(*numbers)} {final_answer(sum(numbers))}"
    parts, total = [], numbers[0]
    for i, n in enumerate(numbers[1:]):
        lead = "First" if i == 0 else "Then"
        parts.append(f"{lead}, {total} + {n}. {addition_steps(total, n)}")
        total += n
    parts.append(final_answer(total))
    return " ".join(parts)


def spell(word: str) -> str:
    """The letters of ``word`` separated by spaces: "lamp" -> "l a m p"; spaces inside ``word`` are dropped."""
    return " ".join(ch for ch in word if not ch.isspace())


def unspell(letters: str) -> str:
    """Inverse of :func:`spell` for one word: "l a m p" -> "lamp"."""
    return letters.replace(" ", "")


def comma_list(items: list[str]) -> str:
    """"apple, fig, pear"."""
    return ", ".join(items)


def chat_transcript(turns: list[tuple[str, str]]) -> str:
    """ChatML without special tokens: each turn is "<role>\\n<content>", turns one per line."""
    return "\n".join(f"{role}\n{content}" for role, content in turns)
