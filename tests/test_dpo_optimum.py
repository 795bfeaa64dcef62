"""DPO reaches the closed-form KL-regularized optimum on an enumerable problem (posttrain.world.bandit).

Preferences are Bradley-Terry draws from a known reward r; DPO's trained policy must approach
pi*(y|x) ∝ pi_ref(y|x) exp(r(x, y) / beta), and move the right way as beta changes. Training uses
the recipe's pieces: preference examples, the concatenated (chosen + rejected) forward of
:class:`posttrain.models.logps.SequenceLogps`, reference log-probs computed once, and the DPO loss.
"""

from __future__ import annotations

import pytest
import torch

from posttrain.data.preference import collate_preferences
from posttrain.losses.dpo import PairLogps, dpo_loss
from posttrain.models.logps import SequenceLogps
from posttrain.models.logps import sequence_inputs as inputs
from posttrain.world.bandit import BanditPairs, kl_divergence, kl_to_optimum, make_bandit

PAIRS = 4000
STEPS = 120


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def problem():
    return make_bandit(seed=0)


@pytest.fixture(scope="module")
def pairs(problem):
    return problem.sample_preferences(PAIRS, seed=0)


def train_dpo(problem, pairs: BanditPairs, beta: float, steps: int = STEPS, lr: float = 3e-3):
    """Full-batch DPO on every pair. Repeated (prompt, chosen, rejected) triples are scored once in
    the forward and expanded back, so the loss is exactly the mean over all PAIRS pairs."""
    triples = torch.stack([pairs.prompt, pairs.chosen, pairs.rejected], dim=1)
    unique, inverse = torch.unique(triples, dim=0, return_inverse=True)
    batch = collate_preferences(problem.preference_examples(BanditPairs(*unique.T)), pad_token_id=0)
    with torch.no_grad():  # the reference's log-probs, computed once before training
        ref_chosen, ref_rejected = batch.split(SequenceLogps(problem.reference_model())(**inputs(batch)))
    policy = problem.reference_model()
    model = SequenceLogps(policy)
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    for _ in range(steps):
        chosen, rejected = batch.split(model(**inputs(batch)))  # one forward for both halves
        loss, _ = dpo_loss(PairLogps(chosen[inverse], rejected[inverse], ref_chosen[inverse], ref_rejected[inverse]),
                           beta=beta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return policy


def test_dpo_reaches_the_closed_form_optimum(problem, pairs):
    beta = 1.0
    start = kl_to_optimum(problem.reference_model(), problem, beta)
    policy = train_dpo(problem, pairs, beta)
    kl = kl_to_optimum(policy, problem, beta)
    assert start > 0.3, f"pi* is too close to pi_ref ({start:.3f}) for the check to mean anything"
    assert kl < 0.05, f"KL(pi* || pi_theta) = {kl:.4f} after DPO (started at {start:.3f})"


def test_the_optimum_moves_the_right_way_with_beta(problem, pairs):
    """Smaller beta: more reward, further from the reference; each policy is nearest its own pi*."""
    low, high = 0.5, 2.0
    sharp, soft = train_dpo(problem, pairs, low), train_dpo(problem, pairs, high)
    assert problem.expected_reward(sharp) > problem.expected_reward(soft) + 0.1
    assert problem.kl_to_reference(sharp) > problem.kl_to_reference(soft) + 0.1
    with torch.no_grad():
        sharp_logps, soft_logps = problem.sequence_logps(sharp), problem.sequence_logps(soft)
    for logps, own, other in ((sharp_logps, low, high), (soft_logps, high, low)):
        mine = kl_divergence(problem.optimum_logps(own), logps).mean()
        theirs = kl_divergence(problem.optimum_logps(other), logps).mean()
        assert mine < 0.1 and theirs > 3 * mine
    # The trained policies match the closed form's own trend: E_pi*[r] falls as beta grows.
    rewards = [(problem.optimum_logps(b).exp() * problem.rewards).sum(-1).mean().item() for b in (low, high)]
    assert rewards[0] > rewards[1]
