"""KL-penalty coefficient controllers for RLHF (Ziegler et al. 2019, "Fine-Tuning Language Models
from Human Preferences", §2.2).

A controller holds ``kl_coef`` (beta, the weight of the per-token KL penalty in the reward) and
updates it once per PPO batch from the measured KL(policy || reference) of that batch's rollouts:
``update(current_kl, n_steps)`` where ``n_steps`` is how many rollouts (episodes) the batch had.
``state_dict()`` / ``load_state_dict()`` let a resumed run continue with the same coefficient.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class FixedKLController:
    """A constant KL coefficient."""

    kl_coef: float
    """beta, the weight of the KL penalty."""

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing changes; present so that both controllers are used the same way."""

    def state_dict(self) -> dict[str, float]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.kl_coef = float(state["kl_coef"])


@dataclass
class AdaptiveKLController:
    """Proportional control of beta toward a target KL (Ziegler et al. 2019, eq. 2):

        e_t      = clip((KL_t - KL_target) / KL_target, -0.2, 0.2)
        beta_t+1 = beta_t * (1 + K_beta * e_t),   K_beta = n_steps / horizon

    as in OpenAI's lm-human-preferences code, where the gain is the fraction of ``horizon``
    episodes that this batch covers. KL above target raises beta; below target lowers it.
    """

    init_kl_coef: float
    """beta at the start of training."""
    target: float
    """The KL (nats per sequence, as measured) that the controller steers toward; > 0."""
    horizon: int
    """Number of episodes over which an error is corrected, e.g. 10000."""

    def __post_init__(self) -> None:
        if self.target <= 0 or self.horizon <= 0:
            raise ValueError(f"AdaptiveKLController needs target > 0 and horizon > 0, "
                             f"got target={self.target}, horizon={self.horizon}")
        self.kl_coef = float(self.init_kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.kl_coef *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.kl_coef = float(state["kl_coef"])
