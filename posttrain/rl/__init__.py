"""RL math for post-training, as plain functions of tensors (torch only).

* ``posttrain.rl.math``: masked mean/var/whitening, GAE, KL estimators (k1, k2, k3), per-token
  KL-penalty rewards, RLOO and GRPO advantages;
* ``posttrain.rl.kl``: fixed and adaptive KL-coefficient controllers (Ziegler et al. 2019).
"""
