"""Win-rates: two answers to the same prompt, which is better? Judges, win-rate, length control.

A **judge** has one method, ``compare(prompts, answers_a, answers_b) -> list[float]``: one verdict
per prompt, 1.0 when answer A is better, 0.0 when B is, 0.5 for a tie, and a value in between
for a soft preference (a judge's probability that A is better). Judges here:

- :class:`ScorerJudge`: any per-response scorer (``posttrain.scorers``); A wins when it
  scores higher. :class:`GoldJudge` uses the embedded world's gold reward, :class:`RewardModelJudge`
  a trained reward model. Each answer is scored on its own, so swapping A and B mirrors the verdict.
- :class:`LLMJudge`: a causal LM shown the prompt and both answers ("Which answer is better, A or
  B?") and read by the next-token log-probabilities of "A" and "B" (no generation). LLM judges
  prefer whichever answer is shown first (or second) (Zheng et al. 2023, "Judging LLM-as-a-judge",
  §3.3), so every pair is asked **in both orders** and the two readings are combined: the average
  of P(A better) over the two orders, or a tie where the orders disagree (``combine="agree"``, as
  MT-Bench counts them). The two orders of a pair are the same two judge prompts whichever answer
  the caller calls A, so the verdict of (b, a) is exactly 1 minus the verdict of (a, b).

**Win-rate** is the mean verdict, a tie counting one half, with an Agresti-Coull ~95% interval
(:func:`~posttrain.evaluation.scoring.proportion_ci` on the summed verdicts; for ties and soft
verdicts the true variance is smaller, so the interval is conservative).

**Length-controlled win-rate** (AlpacaEval 2 LC, Dubois et al. 2024, "Length-Controlled AlpacaEval:
A Simple Way to Debias Automatic Evaluators"): judges, human ones too, favour longer answers, so a
model can raise its win-rate by talking more. A logistic regression of the verdict on the length
difference, ``P(A wins) = sigmoid(b0 + b1 * (len_a - len_b) / s)`` with ``s`` the standard deviation
of the differences, separates the length effect (b1) from everything else (b0); the LC win-rate is
the predicted win-rate at zero length difference, ``sigmoid(b0)``. (AlpacaEval squashes the
difference with a tanh and adds a per-instruction difficulty term; this is the two-parameter core.)
Lengths are counted in words by default.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import torch

from posttrain.evaluation.scoring import proportion_ci
from posttrain.generation.hf import generate_chat
from posttrain.models.config import ModelConfig
from posttrain.models.loading import load_causal_lm, load_tokenizer
from posttrain.models.reward import RewardScorer, as_dicts, positions_from_mask
from posttrain.scorers import Scorer, as_scorer, task_lookup, world_gold_aspect

if TYPE_CHECKING:
    import numpy as np
    import torch

    from posttrain.world.tasks import TaskExample

logger = logging.getLogger("posttrain.evaluation")

Messages = Sequence[Any]
"""A chat prompt: ``{"role", "content"}`` dicts or ``posttrain.data.records.Message`` objects."""


class Judge(Protocol):
    """Anything that says which of two answers to the same prompt is better."""

    name: str
    """Short description for reports, e.g. "gold" or "llm:runs/judge/final"."""

    def compare(self, prompts: Sequence[Messages], answers_a: Sequence[str], answers_b: Sequence[str]) -> list[float]:
        """One verdict per prompt in [0, 1]: 1 A better, 0 B better, 0.5 tie (soft values allowed)."""
        ...


def _check_lengths(prompts: Sequence, answers_a: Sequence, answers_b: Sequence) -> None:
    if not len(prompts) == len(answers_a) == len(answers_b):
        raise ValueError(f"{len(prompts)} prompts, {len(answers_a)} answers A and {len(answers_b)} answers B: "
                         f"give one answer of each side per prompt")


def word_count(text: str) -> int:
    """Length of an answer in words (whitespace-separated), the default length of the LC win-rate."""
    return len(text.split())


# --------------------------------------------------------------------------- judges from scores


def verdicts_from_scores(scores_a: Sequence[float], scores_b: Sequence[float], tie_margin: float = 0.0) -> list[float]:
    """1.0 where A's score is higher by more than ``tie_margin``, 0.0 where B's is, else 0.5."""
    out = []
    for a, b in zip(scores_a, scores_b):
        a, b = float(a), float(b)
        out.append(0.5 if abs(a - b) <= tie_margin else 1.0 if a > b else 0.0)
    return out


class ScorerJudge:
    """Verdicts from a per-response scorer (anything :func:`posttrain.scorers.as_scorer` takes): the
    answer with the higher score wins (ties within ``tie_margin``). ``records``: prompts -> the
    records the scorer needs (the world's gold reward needs each prompt's task)."""

    def __init__(self, scorer: Scorer | Any, name: str = "scorer", tie_margin: float = 0.0,
                 records: Callable[[Sequence[Messages]], list] | None = None):
        if tie_margin < 0:
            raise ValueError(f"tie_margin must be >= 0, got {tie_margin}")
        self.scorer, self.name, self.tie_margin, self.records = as_scorer(scorer), name, tie_margin, records

    def scores(self, prompts: Sequence[Messages], answers: Sequence[str]) -> list[float]:
        """The scorer's score of each answer to its prompt."""
        records = self.records(prompts) if self.records is not None else None
        return [float(s) for s in self.scorer(prompts, answers, records)]

    def compare(self, prompts: Sequence[Messages], answers_a: Sequence[str], answers_b: Sequence[str]) -> list[float]:
        _check_lengths(prompts, answers_a, answers_b)
        return verdicts_from_scores(self.scores(prompts, answers_a), self.scores(prompts, answers_b), self.tie_margin)


class GoldJudge(ScorerJudge):
    """The embedded world's gold reward (:mod:`posttrain.world.gold`) as a judge.

    ``examples`` are the TaskExamples whose prompts will be compared; a prompt is matched to its
    example by its messages (a prompt that is none of them is an error). ``aspect`` is total,
    helpfulness or a component (correctness, rule, safety, brevity).
    """

    def __init__(self, examples: Sequence["TaskExample"], aspect: str = "total", tie_margin: float = 0.0):
        super().__init__(world_gold_aspect(aspect), "gold" if aspect == "total" else f"gold:{aspect}", tie_margin,
                         records=task_lookup(examples))


class RewardModelJudge(ScorerJudge):
    """A trained reward model (a :class:`~posttrain.models.reward.RewardScorer`) as a judge."""

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", dtype: str = "auto", tie_margin: float = 0.0,
                        batch_size: int = 16) -> "RewardModelJudge":
        """A judge from an exported reward-model folder (``posttrain reward``'s ``final/``)."""
        return cls(RewardScorer.from_pretrained(path, device=device, dtype=dtype, batch_size=batch_size),
                   f"reward_model:{path}", tie_margin)


# --------------------------------------------------------------------------- LLM judge

DEFAULT_JUDGE_TEMPLATE = (
    "Here is a request and two answers to it. Which answer is better: correct, helpful, safe, "
    "following any instruction in the request, and no longer than needed?\n\n"
    "Request:\n{question}\n\n"
    "Answer A:\n{answer_a}\n\n"
    "Answer B:\n{answer_b}\n\n"
    "Reply with one letter, A or B."
)
"""The judge's question; ``{question}``, ``{answer_a}`` and ``{answer_b}`` are filled in (other braces doubled)."""

VERDICT_GRID = 2 ** 30
"""LLM verdicts are rounded to multiples of 1 / VERDICT_GRID: such numbers and 1 minus them are exact
floats, so the verdict of the swapped pair is exactly 1 minus the verdict (no rounding noise)."""


def format_conversation(messages: Messages) -> str:
    """A chat prompt as the judge reads it: the user's text alone, or "Role: text" lines for a conversation."""
    turns = [(m["role"], m["content"]) if isinstance(m, dict) else (m.role, m.content) for m in messages]
    if len(turns) == 1 and turns[0][0] == "user":
        return turns[0][1]
    return "\n".join(f"{role.capitalize()}: {content}" for role, content in turns)


def check_template(template: str) -> None:
    """Raise ValueError unless ``template`` formats with exactly question, answer_a and answer_b."""
    try:
        filled = template.format(question="\0q", answer_a="\0a", answer_b="\0b")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"judge template: cannot fill it ({type(e).__name__}: {e}); it may use only {{question}}, "
                         f"{{answer_a}} and {{answer_b}}, and must double any other brace ({{{{ and }}}})") from None
    missing = [k for k, mark in (("question", "\0q"), ("answer_a", "\0a"), ("answer_b", "\0b")) if mark not in filled]
    if missing:
        raise ValueError(f"judge template: it never shows {', '.join('{' + k + '}' for k in missing)}; the judge "
                         f"must see the request and both answers")


def combine_orders(p_first: float, p_second: float, combine: Literal["average", "agree"] = "average") -> float:
    """Verdict for answer X from the two orders: ``p_first`` = P(X better) when X is shown first,
    ``p_second`` = P(Y better) when Y is shown first. average: the mean of P(X better) over the orders;
    agree: 1 or 0 when both orders prefer the same answer, 0.5 when they disagree."""
    if combine == "average":
        return (p_first + (1.0 - p_second)) / 2.0
    if combine == "agree":
        if p_first > 0.5 and p_second < 0.5:
            return 1.0
        if p_first < 0.5 and p_second > 0.5:
            return 0.0
        return 0.5
    raise ValueError(f"combine must be 'average' or 'agree', got {combine!r}")


def _quantize(v: float) -> float:
    return round(v * VERDICT_GRID) / VERDICT_GRID


class LLMJudge:
    """A causal LM asked which of two answers is better, read by its next-token log-probabilities.

    The judge prompt is ``template`` filled with the conversation and the two answers, rendered as
    one user turn with the tokenizer's chat template (``use_chat_template=False``: the raw text, for
    base models), and P(first shown answer better) = ``sigmoid(log p("A") - log p("B"))`` at the
    first token of the reply. ``both_orders=False`` asks only the order given (position-biased; for
    comparison). ``max_answer_tokens`` cuts longer answers (counted in ``truncated``, once per judge
    prompt showing the answer). After each call ``label_mass`` holds the mean probability the judge
    put on the two labels together (near 1: it answers in the expected format).
    """

    def __init__(self, model, tokenizer, template: str = DEFAULT_JUDGE_TEMPLATE, labels: tuple[str, str] = ("A", "B"),
                 both_orders: bool = True, combine: Literal["average", "agree"] = "average", batch_size: int = 8,
                 max_answer_tokens: int | None = None, use_chat_template: bool = True, name: str = "llm"):
        check_template(template)
        if combine not in ("average", "agree"):
            raise ValueError(f"combine must be 'average' or 'agree', got {combine!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if use_chat_template and not tokenizer.chat_template:
            raise ValueError("LLMJudge: the tokenizer has no chat template; load it with posttrain.models.loading."
                             "load_tokenizer (which fills in ChatML) or pass use_chat_template=False")
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.labels, self.both_orders, self.combine = labels, both_orders, combine
        self.batch_size, self.max_answer_tokens = batch_size, max_answer_tokens
        self.use_chat_template = use_chat_template
        self.name = name
        self.truncated = 0
        self.label_mass = float("nan")
        self.label_ids = self._label_ids()

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", dtype: str = "auto", **kwargs) -> "LLMJudge":
        """A judge from a causal-LM folder (or hub name available offline); ``kwargs`` as in the constructor."""
        cfg = ModelConfig(name_or_path=str(path), device=device, dtype=dtype)
        tokenizer = load_tokenizer(cfg)
        model = load_causal_lm(cfg, for_training=False, tokenizer=tokenizer)
        kwargs.setdefault("name", f"llm:{path}")
        return cls(model, tokenizer, **kwargs)

    def render(self, prompt: Messages, first: str, second: str) -> str:
        """The full text the judge reads, ending where its reply's first token goes."""
        text = self.template.format(question=format_conversation(prompt), answer_a=first, answer_b=second)
        if not self.use_chat_template:
            return text
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True)

    def _label_ids(self) -> tuple[int, int]:
        # The label's first token as it follows the judge prompt (a tokenizer may merge it with what precedes).
        probe = self.render([{"role": "user", "content": "?"}], "x", "y")
        base = self._encode(probe)
        ids = []
        for label in self.labels:
            full = self._encode(probe + label)
            own = self.tokenizer(label, add_special_tokens=False)["input_ids"]
            if full[:len(base)] == base and len(full) > len(base):
                ids.append(full[len(base)])
            elif own:
                ids.append(own[0])
            else:
                raise ValueError(f"LLMJudge: label {label!r} encodes to no token")
        if ids[0] == ids[1]:
            raise ValueError(f"LLMJudge: labels {self.labels} start with the same token ({ids[0]}); choose labels "
                             f"whose first tokens differ")
        return ids[0], ids[1]

    def _encode(self, text: str) -> list[int]:
        # A chat template writes its own special tokens; raw text gets the tokenizer's (a bos).
        return self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"]

    def _cut(self, answer: str) -> str:
        if self.max_answer_tokens is None:
            return answer
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_answer_tokens:
            return answer
        self.truncated += 1
        return self.tokenizer.decode(ids[:self.max_answer_tokens], skip_special_tokens=True) + " ..."

    def first_better(self, prompts: Sequence[Messages], firsts: Sequence[str], seconds: Sequence[str]) -> list[float]:
        """P(the answer shown first is better) for each (prompt, first, second), one forward per judge prompt."""
        _check_lengths(prompts, firsts, seconds)
        cut = self.truncated
        sequences = [self._encode(self.render(p, self._cut(f), self._cut(s)))
                     for p, f, s in zip(prompts, firsts, seconds)]
        if self.truncated > cut:
            logger.warning("LLM judge: %d answers cut to max_answer_tokens=%d (%d so far)", self.truncated - cut,
                           self.max_answer_tokens, self.truncated)
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None) or 10**9
        too_long = [i for i, s in enumerate(sequences) if len(s) > limit]
        if too_long:
            raise ValueError(f"LLM judge: {len(too_long)} judge prompts are longer than the judge's context of {limit} "
                             f"tokens (first: pair {too_long[0]}, {len(sequences[too_long[0]])} tokens); set "
                             f"max_answer_tokens to cut long answers")
        out, mass = [0.0] * len(sequences), [0.0] * len(sequences)
        device = next(self.model.parameters()).device
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))  # little padding per batch
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(order), self.batch_size):
                    rows = order[start:start + self.batch_size]
                    logps = self._next_token_logps([sequences[i] for i in rows], device)  # (B, V)
                    lp_a, lp_b = logps[:, self.label_ids[0]], logps[:, self.label_ids[1]]
                    for r, i in enumerate(rows):
                        out[i] = float(torch.sigmoid(lp_a[r] - lp_b[r]))
                        mass[i] = float(lp_a[r].exp() + lp_b[r].exp())
        finally:
            self.model.train(was_training)
        self.label_mass = sum(mass) / len(mass) if mass else float("nan")
        return out

    def _next_token_logps(self, batch: list[list[int]], device) -> "torch.Tensor":
        """(B, V) log-probs of the token after each sequence; left-padded, positions counted from each start."""
        width = max(len(s) for s in batch)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, s in enumerate(batch):
            input_ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s):] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        # Left padding puts every row's last real token in the last column: only its logits are needed.
        logits = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                            use_cache=False, logits_to_keep=1).logits[:, -1]
        return torch.log_softmax(logits.float(), dim=-1).cpu()

    def compare(self, prompts: Sequence[Messages], answers_a: Sequence[str], answers_b: Sequence[str]) -> list[float]:
        _check_lengths(prompts, answers_a, answers_b)
        if not self.both_orders:
            return [_quantize(p) for p in self.first_better(prompts, answers_a, answers_b)]
        # Each pair is asked in a canonical order (x, y) and then (y, x), whichever answer the caller
        # calls A: swapping A and B asks the very same judge prompts, so the verdict mirrors exactly.
        asked = [i for i, (a, b) in enumerate(zip(answers_a, answers_b)) if a != b]
        a_is_x = {i: answers_a[i] < answers_b[i] for i in asked}
        xs = [answers_a[i] if a_is_x[i] else answers_b[i] for i in asked]
        ys = [answers_b[i] if a_is_x[i] else answers_a[i] for i in asked]
        ps = [prompts[i] for i in asked]
        p = self.first_better(ps + ps, xs + ys, ys + xs)
        verdicts = [0.5] * len(prompts)  # identical answers tie without asking
        for k, i in enumerate(asked):
            v_x = _quantize(combine_orders(p[k], p[len(asked) + k], self.combine))
            verdicts[i] = v_x if a_is_x[i] else 1.0 - v_x
        return verdicts


# --------------------------------------------------------------------------- win-rates


@dataclass(frozen=True)
class WinRate:
    win_rate: float
    """Mean verdict for A: wins count 1, ties 1/2 (soft verdicts their value)."""
    ci: float
    """Half-width of the ~95% interval (Agresti-Coull on the summed verdicts)."""
    wins: int
    """Verdicts above 1/2."""
    ties: int
    """Verdicts of exactly 1/2."""
    losses: int
    """Verdicts below 1/2."""
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_verdicts(verdicts: Sequence[float]) -> list[float]:
    values = [float(v) for v in verdicts]
    if not values:
        raise ValueError("no verdicts: compare at least one pair of answers")
    bad = [i for i, v in enumerate(values) if not 0.0 <= v <= 1.0]  # NaN fails both comparisons
    if bad:
        raise ValueError(f"verdicts must be in [0, 1]; verdict {bad[0]} is {values[bad[0]]} ({len(bad)} out of range)")
    return values


def win_rate(verdicts: Sequence[float]) -> WinRate:
    """Win-rate of A over B with ties counted half and a ~95% interval (see the module docstring)."""
    values = _check_verdicts(verdicts)
    total = sum(values)
    return WinRate(total / len(values), proportion_ci(total, len(values)), sum(v > 0.5 for v in values),
                   sum(v == 0.5 for v in values), sum(v < 0.5 for v in values), len(values))


@dataclass(frozen=True)
class LengthControlled:
    lc_win_rate: float
    """Predicted win-rate at zero length difference, sigmoid(intercept); NaN when length cannot be separated."""
    ci: float
    """Half the width of its ~95% interval [low, high]."""
    intercept: float
    """b0, the log-odds of A winning at equal lengths."""
    length_coef: float
    """b1, the change in log-odds per standard deviation of length difference."""
    length_scale: float
    """s, the standard deviation of len_a - len_b the difference was divided by."""
    n: int
    low: float = float("nan")
    """Lower end of the ~95% interval: sigmoid(b0 - 1.96 se(b0))."""
    high: float = float("nan")
    """Upper end of the ~95% interval."""
    note: str = ""
    """Why the regression fell back (constant length difference), else empty."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def fit_logistic(x: "np.ndarray", y: "np.ndarray", l2: float = 0.1, max_iter: int = 100,
                 tol: float = 1e-10) -> tuple["np.ndarray", "np.ndarray"]:
    """Logistic regression of soft targets ``y`` (N,) in [0, 1] on features ``x`` (N, K) by Newton's method.

    Minimizes the summed cross-entropy plus ``l2 / 2 * |beta|^2``, i.e. a Gaussian prior of variance
    1 / l2 on each coefficient: negligible with hundreds of verdicts, but it keeps the fit finite
    when a few verdicts are separable (every shorter answer won). Returns (beta (K,), covariance
    (K, K)), the inverse Hessian at the optimum: the Bernoulli variance, so for soft verdicts (less
    variable than 0/1 ones) the intervals it gives are conservative.
    """
    k = x.shape[1]
    beta = np.zeros(k)
    ridge = l2 * np.eye(k)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        grad = x.T @ (p - y) + ridge @ beta
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge
        step = np.linalg.solve(hess, grad)
        beta = beta - step
        if np.max(np.abs(step)) < tol:
            break
    p = 1.0 / (1.0 + np.exp(-(x @ beta)))
    hess = (x * (p * (1 - p))[:, None]).T @ x + ridge
    return beta, np.linalg.inv(hess)


def length_controlled_win_rate(verdicts: Sequence[float], len_a: Sequence[float], len_b: Sequence[float],
                               l2: float = 0.1) -> LengthControlled:
    """AlpacaEval-style length-controlled win-rate of A over B (see the module docstring).

    ``verdicts`` may be soft; ``len_a``/``len_b`` are the answers' lengths (any unit: the difference
    is standardized). When the length difference is the same for every pair, length and quality
    cannot be separated: with no difference at all the LC win-rate is the raw one, otherwise NaN
    (``note`` says why).
    """
    y = np.asarray(_check_verdicts(verdicts), dtype=np.float64)
    if not len(y) == len(len_a) == len(len_b):
        raise ValueError(f"{len(y)} verdicts but {len(len_a)} lengths A and {len(len_b)} lengths B")
    diff = np.asarray(len_a, dtype=np.float64) - np.asarray(len_b, dtype=np.float64)
    scale = float(diff.std())
    if scale < 1e-12:
        raw = win_rate(y.tolist())
        if np.all(diff == 0):
            return LengthControlled(raw.win_rate, raw.ci, float("nan"), 0.0, 0.0, len(y), raw.win_rate - raw.ci,
                                    raw.win_rate + raw.ci,
                                    "every pair has equal lengths: the LC win-rate is the raw win-rate")
        return LengthControlled(float("nan"), float("nan"), float("nan"), float("nan"), 0.0, len(y),
                                note=f"every pair differs by the same length ({diff[0]:g}): length and quality "
                                     f"cannot be separated")
    x = np.stack([np.ones_like(diff), diff / scale], axis=1)
    beta, cov = fit_logistic(x, y, l2)
    b0, b1 = float(beta[0]), float(beta[1])
    # The interval is taken on the log-odds and mapped back, so it stays inside (0, 1) and does not
    # collapse to zero width near 0 or 1 (as the delta method does).
    half = 1.96 * math.sqrt(max(float(cov[0, 0]), 0.0))
    low, high = _sigmoid(b0 - half), _sigmoid(b0 + half)
    return LengthControlled(_sigmoid(b0), (high - low) / 2, b0, b1, scale, len(y), low, high)


# --------------------------------------------------------------------------- whole comparisons


@dataclass
class Comparison:
    """A judged comparison of answers A against answers B on the same prompts."""

    judge: str
    n: int
    win_rate: float
    """A's win-rate over B, ties counted half."""
    ci: float
    """Half-width of the win-rate's ~95% interval."""
    wins: int
    ties: int
    losses: int
    lc_win_rate: float
    """Length-controlled win-rate (NaN when length cannot be separated; see lc_note)."""
    lc_ci: float
    """Half the width of the LC interval [lc_low, lc_high] (taken on the log-odds, so not centred)."""
    lc_low: float
    lc_high: float
    length_coef: float
    """Log-odds of A winning per standard deviation of length difference (the judge's length preference)."""
    mean_length_a: float
    """Mean answer length of A (words unless another length function was given)."""
    mean_length_b: float
    verdicts: list[float] = field(default_factory=list)
    """One verdict per prompt, in prompt order."""
    lc_note: str = ""

    def summary(self) -> dict[str, Any]:
        """Every number except the per-prompt verdicts."""
        out = asdict(self)
        del out["verdicts"]
        return out


def compare_answers(judge: Judge, prompts: Sequence[Messages], answers_a: Sequence[str], answers_b: Sequence[str],
                    length: Callable[[str], float] = word_count) -> Comparison:
    """Judge A against B on every prompt; win-rate, length-controlled win-rate and mean lengths."""
    _check_lengths(prompts, answers_a, answers_b)
    verdicts = [float(v) for v in judge.compare(prompts, answers_a, answers_b)]
    len_a, len_b = [length(a) for a in answers_a], [length(b) for b in answers_b]
    raw = win_rate(verdicts)
    lc = length_controlled_win_rate(verdicts, len_a, len_b)
    return Comparison(judge=getattr(judge, "name", type(judge).__name__), n=raw.n, win_rate=raw.win_rate, ci=raw.ci,
                      wins=raw.wins, ties=raw.ties, losses=raw.losses, lc_win_rate=lc.lc_win_rate, lc_ci=lc.ci,
                      lc_low=lc.low, lc_high=lc.high,
                      length_coef=lc.length_coef, mean_length_a=sum(len_a) / len(len_a),
                      mean_length_b=sum(len_b) / len(len_b), verdicts=verdicts, lc_note=lc.note)


def generate_answers(model, tokenizer, prompts: Sequence[Messages], max_new_tokens: int = 128,
                     temperature: float = 0.0, batch_size: int = 16, seed: int | None = 0) -> list[str]:
    """Each prompt's answer from ``model`` (greedy unless ``temperature`` > 0), with the chat template."""
    outputs = generate_chat(model, tokenizer, [as_dicts(p) for p in prompts], max_new_tokens=max_new_tokens,
                            temperature=temperature, batch_size=batch_size, seed=seed if temperature > 0 else None)
    return [o.text for o in outputs]


def compare_models(judge: Judge, prompts: Sequence[Messages], model_a, tokenizer_a, model_b, tokenizer_b,
                   length: Callable[[str], float] = word_count,
                   **generation) -> tuple[Comparison, list[str], list[str]]:
    """Generate both models' answers to ``prompts`` (``generation``: see :func:`generate_answers`) and
    judge A against B; returns (comparison, answers A, answers B)."""
    answers_a = generate_answers(model_a, tokenizer_a, prompts, **generation)
    answers_b = generate_answers(model_b, tokenizer_b, prompts, **generation)
    return compare_answers(judge, prompts, answers_a, answers_b, length), answers_a, answers_b
