"""Losses of post-training as pure functions of tensors, each returning ``(loss, metrics)``.

* ``sft``: token log-probs (chunked, memory-aware), per-sequence sums/means, token-level NLL;
* ``reward``: reward-model losses (Bradley-Terry, Llama 2 margin, K-wise rankings, centering);
* ``dpo``: DPO family (DPO, cDPO, IPO, SimPO, ORPO, KTO);
* ``ppo``: PPO clipped policy/value losses, entropy bonus, REINFORCE/RLOO, GRPO.

They import only torch (and ``posttrain.rl.math`` for masked statistics, itself torch only).
Configs pick variants by name through the registries below.
"""

from posttrain.losses.dpo import PREFERENCE_LOSSES
from posttrain.losses.reward import PAIRWISE_LOSSES, RANKING_LOSSES

__all__ = ["PAIRWISE_LOSSES", "PREFERENCE_LOSSES", "RANKING_LOSSES"]
