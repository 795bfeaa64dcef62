"""Rounds of training, each starting from the last one's model: iterative DPO (Llama 2's iterative
rounds; Xu et al. 2023), and any recipe that samples from its own policy, labels and trains again.

Round k lives in ``top/round-k``; the last round's model is ``top/final``; ``top/rounds.json`` holds
every round's summary. A round whose model exists is skipped when the run is started again, so a
killed run resumes at the round it was in (which resumes from its own checkpoints).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from posttrain.files import write_json_atomic

RoundFn = Callable[[int, str, Path], dict]
"""(round number from 1, the model it starts from, its folder) -> its summary; writes folder/final."""


def run_rounds(top: Path, rounds: int, start: str, train_round: RoundFn) -> Path:
    """Train ``rounds`` rounds from the model ``start``; returns ``top/final``."""
    top.mkdir(parents=True, exist_ok=True)
    final, summaries = top / "final", []
    for k in range(1, rounds + 1):
        round_dir = top / f"round-{k}"
        done = final if k == rounds else round_dir / "final"
        if done.exists():
            summaries.append(json.loads((round_dir / "summary.json").read_text(encoding="utf-8")))
        else:
            summaries.append(train_round(k, start, round_dir))
            write_json_atomic(round_dir / "summary.json", summaries[-1])
            if k == rounds:
                shutil.move(str(round_dir / "final"), str(final))
        start = str(done)
    write_json_atomic(top / "rounds.json", summaries)
    return final
