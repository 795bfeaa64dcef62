"""Value functions for PPO, and the module that holds a policy together with its value function.

PPO's critic predicts, at every response position, the return that follows (V(s_t), the state
being the prompt and the response tokens before t). Two shapes are offered:

- **a value head on the policy** (``ValueHead`` on the policy's last hidden states): one forward
  pass gives the log-probs and the values, and no second backbone is held or trained; the
  policy's features are shared with the critic (Stiennon et al. 2020 used separate networks,
  Ziegler et al. 2019 shared ones);
- **a separate critic** (:class:`Critic`): its own transformer backbone plus a head, initialised
  from a reward-model folder (InstructGPT, Ouyang et al. 2022 §3.5: "we initialize the value
  function from the RM") or from any causal-LM folder, the head then starting at zero.

:class:`ActorCritic` wraps the policy and its value function in one ``nn.Module``, so one
optimizer, one checkpoint and one DDP wrapper cover both. Its forward runs the LM head only on
the positions that predict response tokens, so the (tokens, vocab) logits of the prompt are never
made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoModel

from posttrain.models.loading import check_safetensors_folder, resolve_model_path
from posttrain.models.wrappers import transformers_model
from posttrain.models.logps import plain_lm_head
from posttrain.models.reward import RewardNormalization


class ValueHead(nn.Module):
    """A linear map from a hidden state to a scalar value, zero at initialisation (so the first
    advantages are the raw returns rather than noise from a random projection)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, T) float32."""
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1).float()


class Critic(nn.Module):
    """A separate value model: a transformer backbone (``AutoModel``) and a :class:`ValueHead`."""

    def __init__(self, backbone: nn.Module, head: ValueHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, input_ids, attention_mask, response_start: int, response_length: int) -> torch.Tensor:
        """(B, R) values at the positions that predict the response tokens in columns
        ``response_start .. response_start + R - 1`` (the state before each one)."""
        ids, span = drop_left_padding(input_ids, attention_mask, response_start, response_length)
        hidden = self.backbone(input_ids=ids, use_cache=False).last_hidden_state  # (B, T', H)
        return self.head(at_columns(hidden, span))


def load_critic(path: str, dtype: torch.dtype, device: torch.device) -> Critic:
    """A :class:`Critic` from a Hugging Face folder: a reward model (``*ForSequenceClassification``
    with one label: its backbone, and its score layer as the head, rescaled by the reward model's saved
    normalization so that values start on the scale of the normalized rewards) or a causal LM (its
    backbone; the head starts at zero). Weights from safetensors only."""
    folder = Path(resolve_model_path(path))
    check_safetensors_folder(folder)
    backbone = AutoModel.from_pretrained(str(folder), dtype=dtype, use_safetensors=True)
    head = ValueHead(backbone.config.hidden_size)
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            weight = next((k for k in f.keys() if k.split(".")[-2:] == ["score", "weight"]), None)
            if weight is None:
                continue
            score = f.get_tensor(weight)
            if score.shape != head.summary.weight.shape:
                raise ValueError(f"critic: {file} has a score layer of shape {tuple(score.shape)}; a value head "
                                 f"needs one output ({tuple(head.summary.weight.shape)}): use a reward model "
                                 f"with num_labels=1, or a causal-LM folder")
            head.summary.weight.data.copy_(score)
            bias = weight[: -len("weight")] + "bias"
            if bias in f.keys():
                head.summary.bias.data.copy_(f.get_tensor(bias).reshape(1))
    normalization = RewardNormalization.load(folder)
    if normalization is not None:
        # The rewards RL sees are normalized, (raw - mean) / std: start the values on that scale.
        head.summary.weight.data.div_(normalization.std)
        head.summary.bias.data.sub_(normalization.mean).div_(normalization.std)
    return Critic(backbone, head).to(device)


@dataclass
class ResponseOutput:
    """What the policy (and critic) say about the response tokens of a batch of rollouts."""

    logits: torch.Tensor
    """(B, R, V) next-token logits at the positions that predict response tokens 0..R-1."""
    values: torch.Tensor | None
    """(B, R) V(s_t) at the same positions (the state before response token t), or None without a critic."""


class ActorCritic(nn.Module):
    """A causal-LM policy (plain or peft) with a value head on it, a separate :class:`Critic`, or
    no value function (critic-free RLOO / GRPO)."""

    def __init__(self, policy: nn.Module, value_head: ValueHead | None = None, critic: Critic | None = None):
        super().__init__()
        if value_head is not None and critic is not None:
            raise ValueError("ActorCritic takes a value head on the policy or a separate critic, not both")
        self.policy, self.value_head, self.critic = policy, value_head, critic

    @property
    def has_values(self) -> bool:
        return self.value_head is not None or self.critic is not None

    def forward(self, input_ids, attention_mask, response_start: int, response_length: int,
                with_values: bool = True) -> ResponseOutput:
        """Logits (and values) for the responses, which occupy columns
        ``response_start .. response_start + response_length - 1`` of the (B, T) inputs."""
        head_values = with_values and self.value_head is not None
        logits, hidden = response_logits(self.policy, input_ids, attention_mask, response_start, response_length,
                                         return_hidden=head_values)
        values = None
        if head_values:
            values = self.value_head(hidden)
        elif with_values and self.critic is not None:
            values = self.critic(input_ids, attention_mask, response_start, response_length)
        return ResponseOutput(logits=logits, values=values)


def drop_left_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int,
                      response_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a ``[left padding | prompt | response | right padding]`` batch moved left to start at
    column 0: (ids (B, T'), span (B, R)), ``span[b, t]`` being the column of row b that predicts its
    response token t (clamped into the batch where the row has no token t).

    Each row's padding is then all after its last real token, which causal attention never lets a
    real token see: the forward takes no attention mask (sdpa runs its causal kernel, skipping the
    masked half) and no position ids (each row's are 0, 1, ..., as in generation), padding tokens
    give outputs that are never read, and the batch is as wide as its longest row rather than its
    longest prompt plus its longest response.
    """
    T = input_ids.shape[1]
    real = attention_mask.bool()
    shift = response_start - real[:, :response_start].sum(dim=1)  # (B,) left padding of each row
    width = int(real.sum(dim=1).max())
    columns = torch.arange(width, device=input_ids.device) + shift[:, None]  # (B, T')
    ids = input_ids.gather(1, columns.clamp(max=T - 1))
    span = torch.arange(response_length, device=input_ids.device) + (response_start - 1 - shift)[:, None]
    return ids, span.clamp(max=width - 1)


def at_columns(hidden: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """hidden (B, T, H) at each row's own ``columns`` (B, R) -> (B, R, H)."""
    return hidden.gather(1, columns.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


def response_logits(lm: nn.Module, input_ids, attention_mask, response_start: int, response_length: int,
                    return_hidden: bool = False):
    """(logits (B, R, V), last hidden states (B, R, H) or None) of causal LM ``lm`` at the positions
    that predict the response tokens in columns ``response_start .. response_start + R - 1``.

    Position p predicts token p + 1, so these are the R columns just before the response. The rows
    are run without their left padding (:func:`drop_left_padding`), and the LM head on these
    positions only, unless the architecture transforms its logits (soft-capping...).
    """
    ids, span = drop_left_padding(input_ids, attention_mask, response_start, response_length)
    hf = transformers_model(lm)
    if plain_lm_head(lm):
        hidden = at_columns(hf.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state, span)
        return hf.get_output_embeddings()(hidden), (hidden if return_hidden else None)
    out = lm(input_ids=ids, use_cache=False, output_hidden_states=return_hidden)
    return at_columns(out.logits, span), (at_columns(out.hidden_states[-1], span) if return_hidden else None)
