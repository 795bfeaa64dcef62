"""RL for post-training: the math as plain functions of tensors, and the pieces of the RL loop.

* ``posttrain.rl.math``: masked mean/var/whitening, GAE, KL estimators (k1, k2, k3), per-token
  KL-penalty rewards, RLOO and GRPO advantages (torch only);
* ``posttrain.rl.kl``: fixed and adaptive KL-coefficient controllers (Ziegler et al. 2019);
* ``posttrain.rl.rewards``: Llama 2's helpfulness + safety combination (torch only);
* ``posttrain.rl.rollout``: sampled responses as padded tensors on the model's device;
* ``posttrain.rl.prompts``: prompts to roll out from, and the reward over them (``posttrain.scorers``);
* ``posttrain.rl.experience``: a scored rollout's forward passes, joined across processes;
* ``posttrain.rl.algorithms``: PPO, RLOO and GRPO as (advantages, loss), and the update;
* ``posttrain.rl.loop``: the loop (``train``), which the PPO recipe and bench/ppo.py run;
* ``posttrain.rl.settings``: what the loop reads from its config (``RLSettings``);
* ``posttrain.rl.diagnostics``: proxy vs gold reward (reward hacking) plots and summaries.
"""
