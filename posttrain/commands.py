"""Every `posttrain` command, registered with its config class and the function that runs it.

Config classes live in light modules (no torch import) so `posttrain --help` is instant;
the recipe itself is imported only when its command runs.
"""

from posttrain.cli import recipe_command
from posttrain.recipes import config as rc

recipe_command("demo", rc.DemoConfig, "posttrain.demo:run_demo",
               "Run the end-to-end journey on the embedded world, stage by stage.")
recipe_command("pretrain", rc.PretrainConfig, "posttrain.recipes.pretrain:pretrain",
               "Pretrain a causal LM on text (next-token prediction), from scratch or from a checkpoint.")
recipe_command("eval", rc.EvalConfig, "posttrain.evaluation.run:run_eval",
               "Prompt a model on the world's task families: zero-shot, few-shot, CoT and multiple choice.")
recipe_command("contamination", rc.ContaminationConfig, "posttrain.evaluation.contamination:run_contamination",
               "Check evaluation sets for training-data contamination: word n-gram overlap, reported per set.")
recipe_command("export-lm-eval", rc.LmEvalExportConfig, "posttrain.evaluation.lm_eval_export:run_export",
               "Export world task families as lm-evaluation-harness tasks (YAML + local JSONL).")
recipe_command("compare", rc.CompareConfig, "posttrain.compare:run_compare",
               "The same prompts to several checkpoints side by side, judged against the first: terminal table, HTML page, win-rates.")
recipe_command("sft", rc.SFTConfig, "posttrain.recipes.sft:sft",
               "Supervised fine-tuning on conversations: assistant-token loss, packing, LoRA, data mixing and rehearsal.")
recipe_command("reward", rc.RewardConfig, "posttrain.recipes.reward:reward",
               "Train a reward model on comparisons: Bradley-Terry, Llama 2 margins, K-wise rankings; normalized export.")
recipe_command("ppo", rc.PPOConfig, "posttrain.recipes.ppo:ppo",
               "RLHF against reward models or functions with a KL penalty: PPO, RLOO or GRPO, with reward-hacking diagnostics.")
recipe_command("dpo", rc.DPOConfig, "posttrain.recipes.dpo:dpo",
               "Preference optimization without a reward model: DPO, cDPO, IPO, SimPO, ORPO, KTO; iterative rounds.")
