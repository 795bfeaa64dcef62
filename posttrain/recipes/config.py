"""Config classes of every recipe, defined once: YAML files, CLI overrides and --help come from here.

Sections shared by recipes (model, data, train) live beside the code that reads them;
algorithm settings are kept apart from infrastructure settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from posttrain.data.config import DataConfig
from posttrain.models.config import ModelConfig
from posttrain.training.config import TrainConfig


@dataclass
class DemoConfig:
    run_dir: str = "runs/demo"
    """Where every stage writes its run directory and the demo its report; finished stages are reused."""
    seed: int = 0
    """Seed of the world and of every stage."""
    quick: bool = False
    """Tiny sizes everywhere: a smoke test of the whole journey in about a minute."""
