"""Direct preference optimization and its relatives: DPO, conservative DPO, IPO (against a
reference model); SimPO, ORPO (reference-free); KTO (unpaired, desirable/undesirable labels).

Every loss has one signature, ``fn(x, **hyper) -> (loss, metrics)``: ``x`` is a :class:`PairLogps`
(sequence log-probs of chosen and rejected responses under the policy and, for losses against a
reference, the reference; response lengths) or, for the unpaired KTO, an :class:`UnpairedLogps`.
Log-probs are *summed* over response tokens (``posttrain.losses.sft.sum_logps``), shape (B,).
The hyperparameters are keyword arguments with defaults, documented under ``Args:``.

One registry, :data:`PREFERENCE_LOSSES`, filled by :func:`preference_loss`, which states whether
the loss needs a reference. A config names a loss and its hyperparameters in one mapping,
``loss: {name: cdpo, beta: 0.1, label_smoothing: 0.1}``, checked against the function's
signature (:func:`resolve_loss`). A new variant is one decorated function::

    @preference_loss("my_loss", reference=True)
    def my_loss(x: PairLogps, beta: float = 0.1) -> tuple[torch.Tensor, dict]:
        ...

Notation: the implicit reward of a response is  beta * (log pi(y|x) - log pi_ref(y|x)),  and
h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)).

The loss is a mean over pairs (examples for KTO); to sum instead (``posttrain.training.loop``
wants sums), multiply by the number of pairs. Metrics follow TRL's names: rewards/chosen,
rewards/rejected (mean implicit rewards), rewards/accuracies (chosen reward > rejected reward),
rewards/margins, logps/chosen, logps/rejected (mean policy sequence log-probs as passed in).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import docstring_parser
import torch
import torch.nn.functional as F

from posttrain.rl.math import masked_mean


@dataclass(frozen=True)
class PairLogps:
    """Sequence log-probs of B preference pairs, each (B,), summed over response tokens."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    """The reference's log-probs (losses registered with reference=True); no gradient flows into them."""
    ref_rejected: torch.Tensor | None = None
    chosen_lengths: torch.Tensor | None = None
    """Response token counts (the length-normalized losses)."""
    rejected_lengths: torch.Tensor | None = None

    def log_ratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi/pi_ref of chosen, of rejected), each (B,); the reference carries no gradient."""
        if self.ref_chosen is None or self.ref_rejected is None:
            raise ValueError("this loss compares the policy with a reference: pass ref_chosen and ref_rejected")
        return self.policy_chosen - self.ref_chosen.detach(), self.policy_rejected - self.ref_rejected.detach()

    def lengths(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) response lengths, checked positive."""
        if self.chosen_lengths is None or self.rejected_lengths is None:
            raise ValueError("this loss normalizes by response length: pass chosen_lengths and rejected_lengths")
        _check_lengths(self.chosen_lengths, self.rejected_lengths)
        return self.chosen_lengths, self.rejected_lengths


@dataclass(frozen=True)
class UnpairedLogps:
    """Sequence log-probs of B unpaired examples, each labelled desirable or undesirable (KTO)."""

    policy: torch.Tensor
    """(B,) summed log-probs of each completion under the policy."""
    ref: torch.Tensor
    """(B,) the same under the reference (no gradient flows into it)."""
    desirable: torch.Tensor
    """(B,) bool: the example's label."""
    reference_point: torch.Tensor | float = 0.0
    """KTO's z0 (:func:`kto_reference_point`), averaged over the global batch; detached."""


@dataclass(frozen=True)
class PreferenceLoss:
    """A registered preference loss: its function and what it needs."""

    name: str
    fn: Callable[..., tuple[torch.Tensor, dict]]
    reference: bool
    """Whether the loss compares the policy with a reference policy (log-probs of both)."""
    unpaired: bool
    """Whether it trains on unpaired examples (:class:`UnpairedLogps`) instead of pairs."""

    def __call__(self, x: PairLogps | UnpairedLogps, **hyper: Any) -> tuple[torch.Tensor, dict]:
        return self.fn(x, **hyper)

    def defaults(self) -> dict[str, Any]:
        """The hyperparameters and their defaults, from the function's signature."""
        params = list(inspect.signature(self.fn).parameters.values())[1:]
        return {p.name: p.default for p in params}

    def docs(self) -> tuple[str, dict[str, str]]:
        """(one-line summary, hyperparameter -> description), from the function's docstring."""
        doc = docstring_parser.parse(self.fn.__doc__ or "")
        return doc.short_description or "", {p.arg_name: " ".join((p.description or "").split()) for p in doc.params}


PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {}
"""Every preference loss by config name (``loss.name``)."""


def preference_loss(name: str, *, reference: bool) -> Callable:
    """Register ``fn(x, **hyper) -> (loss, metrics)`` as ``name``; ``reference``: it needs the reference's
    log-probs. Whether it is unpaired is read from the annotation of ``x``."""

    def register(fn: Callable) -> Callable:
        known = PREFERENCE_LOSSES.get(name)
        if known is not None and (known.fn.__module__, known.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"preference loss {name!r} is already {known.fn.__module__}.{known.fn.__qualname__}; "
                             "register yours under another name")
        x = next(iter(inspect.signature(fn).parameters.values()))
        unpaired = x.annotation in (UnpairedLogps, "UnpairedLogps")
        PREFERENCE_LOSSES[name] = PreferenceLoss(name, fn, reference, unpaired)
        return fn

    return register


def resolve_loss(choice: str | dict[str, Any]) -> tuple[PreferenceLoss, dict[str, Any]]:
    """The loss a config names and its hyperparameters, defaults filled in: ``choice`` is a name or a
    mapping ``{name: ..., <hyperparameter>: value, ...}``. Raises ValueError naming what to fix."""
    settings = {"name": choice} if isinstance(choice, str) else dict(choice)
    name = settings.pop("name", "sigmoid")
    if name not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(PREFERENCE_LOSSES)}")
    loss = PREFERENCE_LOSSES[name]
    defaults = loss.defaults()
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        takes = ", ".join(defaults) or "no hyperparameters"
        raise ValueError(f"loss {name} has no parameter {', '.join(map(repr, unknown))}; it takes {takes}")
    hyper = {**defaults, **settings}
    for key, value in hyper.items():
        if isinstance(defaults[key], float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"loss {name}: {key} must be a number, got {value!r}")
    return loss, {k: float(v) if isinstance(defaults[k], float) else v for k, v in hyper.items()}


def loss_help() -> list[str]:
    """Lines for ``posttrain dpo --help``: every loss, its hyperparameters, defaults and docs."""
    lines = ["Preference losses (loss.name) and their parameters (loss.<parameter>):"]
    for loss in PREFERENCE_LOSSES.values():
        summary, docs = loss.docs()
        needs = "needs a reference" if loss.reference else "reference-free"
        lines.append(f"  {loss.name}: {summary.rstrip('.')} [{needs}{', unpaired examples' if loss.unpaired else ''}]")
        lines.extend(f"      {key} = {default!r}: {docs.get(key, '')}" for key, default in loss.defaults().items())
    return lines


def _preference_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, x: PairLogps) -> dict:
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": x.policy_chosen.detach().mean(),
        "logps/rejected": x.policy_rejected.detach().mean(),
    }


def _check_lengths(*lengths: torch.Tensor) -> None:
    if any(bool((n <= 0).any()) for n in lengths):
        raise ValueError("response lengths must be positive token counts; an empty response has no "
                         "per-token log-prob (drop it, or check the response mask)")


@preference_loss("sigmoid", reference=True)
def dpo_loss(x: PairLogps, beta: float = 0.1) -> tuple[torch.Tensor, dict]:
    """DPO, -log sigmoid(beta * h) (Rafailov et al. 2023, eq. 7).

    Args:
        beta: KL strength, the scale of the implicit reward beta * log(pi / pi_ref).
    """
    chosen, rejected = x.log_ratios()
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return loss, _preference_metrics(beta * chosen, beta * rejected, x)


@preference_loss("cdpo", reference=True)
def cdpo_loss(x: PairLogps, beta: float = 0.1, label_smoothing: float = 0.1) -> tuple[torch.Tensor, dict]:
    """Conservative DPO, for labels flipped with probability eps (Mitchell 2023).

    From "A note on DPO with noisy preferences & relationship to IPO":

        -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)

    eps = 0 is DPO. The loss is minimized at a finite h (sigmoid(beta * h) = 1 - eps) instead of
    pushing h to infinity.

    Args:
        beta: KL strength, as DPO's.
        label_smoothing: eps, the probability that a label is flipped, in [0, 0.5).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing is the probability that a label is flipped, in [0, 0.5); got {label_smoothing}")
    chosen, rejected = x.log_ratios()
    logits = beta * (chosen - rejected)
    loss = (-(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)).mean()
    return loss, _preference_metrics(beta * chosen, beta * rejected, x)


@preference_loss("ipo", reference=True)
def ipo_loss(x: PairLogps, beta: float = 0.1) -> tuple[torch.Tensor, dict]:
    """IPO, (h - 1/(2 beta))^2 (Azar et al. 2023, eq. 17, with tau = beta); minimum at h = 1/(2 beta).

    From "A General Theoretical Paradigm to Understand Learning from Human Preferences". h is built
    from whatever log-probs are passed: the paper's are sequence log-probs (summed over tokens, as
    DPO's); TRL's ``loss_type="ipo"`` passes per-token means instead
    (:func:`posttrain.losses.sft.mean_logps`), which changes the scale of h and so the sensible beta.

    Args:
        beta: tau, the regularization: the target margin is 1 / (2 beta).
    """
    chosen, rejected = x.log_ratios()
    loss = ((chosen - rejected - 1 / (2 * beta)) ** 2).mean()
    return loss, _preference_metrics(beta * chosen, beta * rejected, x)


@preference_loss("simpo", reference=False)
def simpo_loss(x: PairLogps, beta: float = 2.0, gamma: float = 0.5) -> tuple[torch.Tensor, dict]:
    """SimPO, reference-free with length-normalized rewards (Meng et al. 2024, eq. 6).

        -log sigmoid(beta / |y_w| * log pi(y_w|x) - beta / |y_l| * log pi(y_l|x) - gamma)

    Rewards in the metrics are beta * mean token log-prob. Defaults are TRL's.

    Args:
        beta: reward scale (about 2).
        gamma: target reward margin.
    """
    chosen_lengths, rejected_lengths = x.lengths()
    chosen = beta * x.policy_chosen / chosen_lengths
    rejected = beta * x.policy_rejected / rejected_lengths
    loss = -F.logsigmoid(chosen - rejected - gamma).mean()
    return loss, _preference_metrics(chosen, rejected, x)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate everywhere (Maechler 2012: expm1 near 0, log1p far)."""
    near_zero = x > -0.6931471805599453  # -log 2
    # Each branch gets an argument safe for it, so the unused branch cannot produce NaN gradients.
    return torch.where(near_zero, torch.log(-torch.expm1(torch.where(near_zero, x, -1.0))),
                       torch.log1p(-torch.exp(torch.where(near_zero, -1.0, x))))


@preference_loss("orpo", reference=False)
def orpo_loss(x: PairLogps, lam: float = 0.1) -> tuple[torch.Tensor, dict]:
    """ORPO, SFT plus an odds-ratio penalty, no reference (Hong et al. 2024, eqs. 6-7).

        L = NLL(y_w) + lam * -log sigmoid(log odds(y_w) - log odds(y_l)),
        log odds(y) = log P(y) - log(1 - P(y)),  log P(y) = log pi(y|x) / |y|  (eq. 4)

    NLL is the token-level mean over every chosen token of the batch (sum of logps / sum of
    lengths, as a causal-LM cross-entropy). Length-normalized logps are capped just below 0 so
    that odds stay finite when the model is certain. Metrics add nll and log_odds_ratio; rewards
    are lam * mean token log-prob (TRL's).

    Args:
        lam: weight of the odds-ratio term added to the chosen responses' NLL.
    """
    chosen_lengths, rejected_lengths = x.lengths()
    chosen_mean = (x.policy_chosen / chosen_lengths).clamp(max=-1e-6)
    rejected_mean = (x.policy_rejected / rejected_lengths).clamp(max=-1e-6)
    log_odds = (chosen_mean - log1mexp(chosen_mean)) - (rejected_mean - log1mexp(rejected_mean))
    odds_ratio_loss = -F.logsigmoid(log_odds).mean()
    nll = -x.policy_chosen.sum() / chosen_lengths.sum()
    metrics = _preference_metrics(lam * chosen_mean, lam * rejected_mean, x)
    metrics.update(nll=nll.detach(), log_odds_ratio=log_odds.detach().mean())
    return nll + lam * odds_ratio_loss, metrics


def chosen_nll(policy_chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """Length-normalized negative log-likelihood of the chosen responses, mean over pairs:

        -(1/B) sum_b log pi(y_w,b | x_b) / |y_w,b|

    the term DPO+NLL adds with a weight alpha to a preference loss, so that the chosen responses'
    likelihood keeps rising instead of falling along with the rejected ones' (Pang et al. 2024,
    "Iterative Reasoning Preference Optimization", eq. 3; TRL's ``rpo_alpha``).
    Shapes: (B,) summed logps, (B,) response token counts -> scalar."""
    _check_lengths(chosen_lengths)
    return -(policy_chosen_logps / chosen_lengths).mean()


def kto_reference_point(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0 = max(0, mean log pi(y'|x) / pi_ref(y'|x)), a biased estimate of
    KL(pi || pi_ref) from mismatched pairs (x, y') — each prompt with another example's
    completion (Ethayarajh et al. 2024, §4.1). Detached: no gradient flows through z0.
    Shapes: (M,), (M,) -> scalar. Average over the global batch (all processes) before use."""
    return (policy_kl_logps.detach() - ref_kl_logps.detach()).mean().clamp(min=0)


@preference_loss("kto", reference=True)
def kto_loss(x: UnpairedLogps, beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """KTO, from unpaired desirable / undesirable examples (Ethayarajh et al. 2024, §4.1).

    The loss L_KTO = E[lambda_y - v(x, y)], averaged over all examples:

        r = log pi(y|x) - log pi_ref(y|x),  z0 = x.reference_point (:func:`kto_reference_point`)
        desirable:   lambda_D * (1 - sigmoid(beta * (r - z0)))
        undesirable: lambda_U * (1 - sigmoid(beta * (z0 - r)))

    Metrics: rewards/chosen and rewards/rejected (mean beta * r over desirable / undesirable
    examples; 0 if none), kl (z0), logps/chosen, logps/rejected likewise.

    Args:
        beta: KL strength, as DPO's.
        desirable_weight: lambda_D, the weight of desirable examples (the paper keeps lambda_D n_D / (lambda_U n_U) in [1, 4/3]).
        undesirable_weight: lambda_U, the weight of undesirable examples.
    """
    log_ratio = x.policy - x.ref.detach()
    z0 = torch.as_tensor(x.reference_point, dtype=log_ratio.dtype, device=log_ratio.device).detach()
    losses = torch.where(x.desirable,
                         desirable_weight * (1 - torch.sigmoid(beta * (log_ratio - z0))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (z0 - log_ratio))))
    rewards, logps = beta * log_ratio.detach(), x.policy.detach()
    metrics = {
        "rewards/chosen": masked_mean(rewards, x.desirable),
        "rewards/rejected": masked_mean(rewards, ~x.desirable),
        "logps/chosen": masked_mean(logps, x.desirable),
        "logps/rejected": masked_mean(logps, ~x.desirable),
        "kl": z0,
    }
    return losses.mean(), metrics
