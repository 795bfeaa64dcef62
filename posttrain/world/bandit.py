"""An enumerable preference problem whose KL-regularized optimum is known in closed form.

The checks of DPO and PPO in this package end here: a policy trained on preferences (DPO) or
against a reward with a KL penalty (PPO) must approach

    pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x)

(Rafailov et al. 2023, eq. 4; the optimum of max E[r] - beta KL(pi || pi_ref)), which is computable
exactly when every output y can be listed.

**The problem.** A tiny Llama (``transformers``' ``LlamaForCausalLM``) over a vocabulary of
``vocab_size`` tokens (3 by default). There are ``num_prompts`` prompts, each a distinct sequence
of ``prompt_length`` tokens, and a completion is *any* sequence of exactly ``completion_length``
tokens: the completions are the whole output space of "generate L tokens" (3^2 = 9 per prompt by
default), not a subset, so

- pi(y|x) is the model's own sequence probability, product of its token probabilities, with no
  renormalization: the K = vocab_size^L probabilities of a prompt sum to 1 exactly;
- sampling L tokens with ``model.generate`` (no eos: the vocabulary has no special tokens;
  :func:`posttrain.generation.generate` with ``stop_at_eos=False``) samples exactly this pi, so an
  RL method needs nothing problem-specific to roll out;
- every sampled completion has a reward: r(x, y) is a table (P, K) of seeded Gaussian values times
  ``reward_scale``.

**The reference** pi_ref is :meth:`BanditProblem.reference_model`, a randomly initialised model
(seeded) whose weights are drawn wider than usual (``init_scale``) so that pi_ref is clearly not
uniform: pi* then differs from the plain softmax of r/beta, and a method that ignores the
reference fails the check. Train a fresh :meth:`reference_model` as the policy.

**Preferences** are Bradley-Terry draws on r with temperature 1 (rewards carry the scale):
P(y_a > y_b | x) = sigmoid(r(x, y_a) - r(x, y_b)), for prompts and pairs of distinct completions
drawn uniformly (:meth:`BanditProblem.sample_preferences`), so DPO with the same ``beta`` has pi*
as the optimum of its infinite-data loss.

Token ids are used throughout (prompts and completions of fixed lengths, so no padding ever
occurs); :meth:`BanditProblem.tokenizer` gives a matching word-level tokenizer ("a b c") for code
that wants one, e.g. ``posttrain.generation.generate``.

Exact measures, in nats, each averaged over prompts: :func:`kl_to_optimum`
(KL(pi* || pi_theta)), :meth:`BanditProblem.kl_to_reference` (KL(pi_theta || pi_ref)) and
:meth:`BanditProblem.expected_reward` (E_pi_theta[r]).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from posttrain.data.chat import PromptResponse
from posttrain.data.preference import PreferenceExample
from posttrain.models.tiny import tiny_llama

if TYPE_CHECKING:
    from posttrain.data.preference import PreferenceExample

LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass
class BanditPairs:
    """Preference pairs as indices into the problem's tables, each (N,) long."""

    prompt: torch.Tensor
    """Prompt index of each pair, in [0, num_prompts)."""
    chosen: torch.Tensor
    """Completion index of the preferred response, in [0, num_completions)."""
    rejected: torch.Tensor
    """Completion index of the other response (never equal to ``chosen``)."""

    def __len__(self) -> int:
        return len(self.prompt)


@dataclass
class BanditProblem:
    """A handful of prompts, every completion of a few tokens, a known reward, a tiny reference model.

    Build one with :func:`make_bandit`. Tables are indexed [prompt, completion]; completion k is
    ``completions[k]``, the k-th sequence of ``completion_length`` tokens in lexicographic order
    (so its index is the sequence read as a base-``vocab_size`` number).
    """

    prompts: torch.Tensor
    """(P, prompt_length) long, distinct prompts."""
    completions: torch.Tensor
    """(K, completion_length) long, every sequence of completion_length tokens, K = vocab_size ** completion_length."""
    rewards: torch.Tensor
    """(P, K) float32, r(x, y)."""
    vocab_size: int
    """Tokens in the vocabulary (every one of them may appear in a completion)."""
    model_seed: int
    """Seed of the reference model's random weights."""
    model_kwargs: dict = field(default_factory=dict)
    """Size of the reference model (``posttrain.models.tiny.tiny_llama`` arguments)."""
    _ref_logps: torch.Tensor | None = field(default=None, repr=False)

    # --- shapes -----------------------------------------------------------------------------

    @property
    def num_prompts(self) -> int:
        return self.prompts.shape[0]

    @property
    def num_completions(self) -> int:
        return self.completions.shape[0]

    @property
    def prompt_length(self) -> int:
        return self.prompts.shape[1]

    @property
    def completion_length(self) -> int:
        return self.completions.shape[1]

    # --- the model ---------------------------------------------------------------------------

    def reference_model(self):
        """A fresh copy of pi_ref: the same seeded random ``LlamaForCausalLM`` (fp32) at every call."""
        model = tiny_llama(self.vocab_size, seed=self.model_seed, **self.model_kwargs)
        # No special tokens exist: nothing ends a completion early, every completion has L tokens.
        for config in (model.config, model.generation_config):
            config.bos_token_id = config.eos_token_id = config.pad_token_id = None
        return model

    def tokenizer(self):
        """A word-level tokenizer over the vocabulary ("a", "b", ...; text "a b c"), without special tokens."""
        if self.vocab_size > len(LETTERS):
            raise ValueError(f"tokenizer() names tokens by letter, so it covers at most {len(LETTERS)} tokens; "
                             f"this problem has {self.vocab_size}")
        tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(LETTERS[:self.vocab_size])}, unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with spaces
        return PreTrainedTokenizerFast(tokenizer_object=tok)

    def sequences(self) -> torch.Tensor:
        """(P * K, prompt_length + completion_length) ids of every prompt + completion, prompt-major."""
        P, K = self.num_prompts, self.num_completions
        return torch.cat([self.prompts.repeat_interleave(K, dim=0), self.completions.repeat(P, 1)], dim=1)

    def sequence_logps(self, model) -> torch.Tensor:
        """(P, K) log pi(y|x) of every completion under ``model``, in one forward.

        Differentiable when gradients are enabled (exact-gradient checks); the model's train/eval
        mode is left as it is (a Llama has no dropout by default).
        """
        device = next(model.parameters()).device
        ids = self.sequences().to(device)
        logits = model(input_ids=ids).logits.float()  # (P*K, T, V)
        start = self.prompt_length - 1  # the logit at position t predicts token t + 1
        token_logps = torch.log_softmax(logits[:, start:-1], dim=-1).gather(-1, ids[:, start + 1:, None]).squeeze(-1)
        return token_logps.sum(-1).view(self.num_prompts, self.num_completions).cpu()

    @property
    def ref_logps(self) -> torch.Tensor:
        """(P, K) log pi_ref(y|x), computed once."""
        if self._ref_logps is None:
            with torch.no_grad():
                self._ref_logps = self.sequence_logps(self.reference_model())
        return self._ref_logps

    def optimum_logps(self, beta: float) -> torch.Tensor:
        """(P, K) log pi*(y|x) = log_softmax(log pi_ref + r / beta) over the completions of each prompt."""
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        return torch.log_softmax(self.ref_logps + self.rewards / beta, dim=-1)

    # --- rewards and preferences -------------------------------------------------------------

    def completion_index(self, completion_ids: torch.Tensor) -> torch.Tensor:
        """(B, completion_length) ids -> (B,) completion indices (base-vocab_size numbers)."""
        completion_ids = torch.as_tensor(completion_ids).long().cpu()
        if completion_ids.ndim != 2 or completion_ids.shape[1] != self.completion_length:
            raise ValueError(f"completions must be (B, {self.completion_length}) ids, got shape {tuple(completion_ids.shape)}")
        if ((completion_ids < 0) | (completion_ids >= self.vocab_size)).any():
            raise ValueError(f"completion ids must be in [0, {self.vocab_size})")
        powers = self.vocab_size ** torch.arange(self.completion_length - 1, -1, -1)
        return (completion_ids * powers).sum(-1)

    def prompt_index(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """(B, prompt_length) ids -> (B,) index of each prompt; an error names a row that is not a prompt."""
        prompt_ids = torch.as_tensor(prompt_ids).long().cpu()
        if prompt_ids.ndim != 2 or prompt_ids.shape[1] != self.prompt_length:
            raise ValueError(f"prompts must be (B, {self.prompt_length}) ids, got shape {tuple(prompt_ids.shape)}")
        match = (prompt_ids[:, None, :] == self.prompts[None]).all(-1)  # (B, P)
        missing = (~match.any(-1)).nonzero().flatten().tolist()
        if missing:
            raise ValueError(f"rows {missing} are not prompts of this problem: {prompt_ids[missing[0]].tolist()} "
                             f"is none of {self.prompts.tolist()}")
        return match.float().argmax(-1)

    def reward(self, prompt_ids: torch.Tensor, completion_ids: torch.Tensor) -> torch.Tensor:
        """(B,) r(x, y) for (B, prompt_length) prompts and (B, completion_length) completions."""
        return self.rewards[self.prompt_index(prompt_ids), self.completion_index(completion_ids)]

    def sample_preferences(self, num_pairs: int, seed: int = 0) -> BanditPairs:
        """``num_pairs`` Bradley-Terry labels: a uniform prompt, a uniform pair of distinct completions,
        the first preferred with probability sigmoid(r_first - r_second)."""
        g = torch.Generator().manual_seed(seed)
        P, K = self.num_prompts, self.num_completions
        prompt = torch.randint(P, (num_pairs,), generator=g)
        first = torch.randint(K, (num_pairs,), generator=g)
        second = (first + torch.randint(1, K, (num_pairs,), generator=g)) % K  # uniform over the others
        p_first = torch.sigmoid(self.rewards[prompt, first] - self.rewards[prompt, second])
        first_wins = torch.rand(num_pairs, generator=g) < p_first
        return BanditPairs(prompt, torch.where(first_wins, first, second), torch.where(first_wins, second, first))

    def preference_examples(self, pairs: BanditPairs) -> list["PreferenceExample"]:
        """The pairs as tokenized preference examples (``posttrain.data.preference``), for DPO's batches."""
        def example(p: int, c: int) -> PromptResponse:
            prompt, completion = self.prompts[p].tolist(), self.completions[c].tolist()
            return PromptResponse(prompt + completion, [False] * len(prompt) + [True] * len(completion), len(prompt))

        return [PreferenceExample(example(p, c), example(p, r))
                for p, c, r in zip(pairs.prompt.tolist(), pairs.chosen.tolist(), pairs.rejected.tolist())]

    # --- exact measures ---------------------------------------------------------------------

    @torch.no_grad()
    def expected_reward(self, model) -> float:
        """E_{y ~ pi_theta(.|x)}[r(x, y)], averaged over prompts."""
        return float((self.sequence_logps(model).exp() * self.rewards).sum(-1).mean())

    @torch.no_grad()
    def kl_to_reference(self, model) -> float:
        """KL(pi_theta || pi_ref), averaged over prompts."""
        return float(kl_divergence(self.sequence_logps(model), self.ref_logps).mean())


def kl_divergence(p_logps: torch.Tensor, q_logps: torch.Tensor) -> torch.Tensor:
    """(P,) KL(p || q) = sum_k p_k (log p_k - log q_k) per row of (P, K) normalized log-probs."""
    return (p_logps.exp() * (p_logps - q_logps)).sum(-1)


@torch.no_grad()
def kl_to_optimum(model, problem: BanditProblem, beta: float) -> float:
    """KL(pi* || pi_theta) in nats, averaged over the problem's prompts, pi* at ``beta``.

    The direction of the issue's check: it is large wherever pi* has mass that pi_theta misses.
    """
    return float(kl_divergence(problem.optimum_logps(beta), problem.sequence_logps(model)).mean())


def make_bandit(num_prompts: int = 4, vocab_size: int = 3, prompt_length: int = 3, completion_length: int = 2,
                reward_scale: float = 2.0, seed: int = 0, hidden_size: int = 64, num_layers: int = 2,
                init_scale: float = 0.2) -> BanditProblem:
    """The default problem: 4 prompts x 9 completions, rewards N(0, 2^2), a 2-layer width-64 Llama.

    With ``beta = 1`` pi* is far from pi_ref (KL(pi* || pi_ref) = 0.59 nat per prompt at seed 0),
    so reaching KL(pi* || pi_theta) < 0.05 needs the reward and the reference both right. 4000
    Bradley-Terry pairs pin pi* down to about 0.01 nat (the exact maximum-likelihood fit). Width 64
    matters: a width-32 model cannot represent every pi* here (its best fit stays ~0.03 nat away). ``seed``
    draws the prompts, the rewards and the model's weights; ``init_scale`` is the std of the
    model's initial weights (transformers' ``initializer_range``; larger: a peakier pi_ref).
    """
    if vocab_size < 2 or completion_length < 1 or num_prompts < 1 or prompt_length < 1:
        raise ValueError("make_bandit needs vocab_size >= 2 and at least one prompt, prompt token and completion token")
    if num_prompts > vocab_size ** prompt_length:
        raise ValueError(f"only {vocab_size ** prompt_length} distinct prompts of {prompt_length} tokens exist "
                         f"over {vocab_size} tokens; asked for {num_prompts}")
    g = torch.Generator().manual_seed(seed)
    prompt_codes = torch.randperm(vocab_size ** prompt_length, generator=g)[:num_prompts]
    powers = vocab_size ** torch.arange(prompt_length - 1, -1, -1)
    prompts = (prompt_codes[:, None] // powers) % vocab_size  # (P, prompt_length)
    completions = torch.tensor(list(itertools.product(range(vocab_size), repeat=completion_length)), dtype=torch.long)
    rewards = reward_scale * torch.randn(num_prompts, completions.shape[0], generator=g)
    num_heads = 4 if hidden_size % 4 == 0 else 1
    model_kwargs = dict(hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                        max_positions=max(8, 2 ** math.ceil(math.log2(prompt_length + completion_length))),
                        initializer_range=init_scale)
    return BanditProblem(prompts, completions, rewards.float(), vocab_size, seed, model_kwargs)
