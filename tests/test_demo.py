"""`posttrain demo quick=true` end to end: every stage of the journey runs on the embedded world
(tiny sizes), a rerun reuses what is finished, every exported model gets a model card, and the
report opens in headless Chromium with the stage table, the plots and the card links.

The full demo (default sizes, about 15 minutes) is measured outside the suite; this is its smoke
test, a couple of minutes on one core.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

STAGES = ["world", "base", "prompting", "sft", "reward", "dpo", "ppo", "overoptimization", "final"]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> Path:
    from posttrain.config import load_config
    from posttrain.demo import run_demo
    from posttrain.recipes.config import DemoConfig

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("demo") / "run"
    try:
        run_demo(load_config(DemoConfig, None, ["quick=true", f"run_dir={root}", "eval_n=10", "final_n=4"]))
    finally:
        torch.set_num_threads(before)
    return root


def test_every_stage_ran_and_the_final_stage_compares_every_model(quick_demo):
    summary = json.loads((quick_demo / "summary.json").read_text())
    assert list(summary) == STAGES
    final = summary["final"]
    assert set(final["models"]) == {"base", "sft", "dpo", "ppo"}
    assert set(final["gold"]) == {"base", "sft", "best_of_n", "dpo", "ppo"} and final["best_of_n"] == 2
    assert all(0.0 <= g["mean"] <= 1.0 for g in final["gold"].values())
    assert set(final["win_rate_vs_sft"]) == {"base", "best_of_n", "dpo", "ppo"} and set(final["kl_to_sft"]) == {"dpo", "ppo"}
    for name in ("sft", "dpo", "ppo"):
        card = Path(final["models"][name]) / "README.md"
        assert card.read_text().startswith("---\nlicense: apache-2.0"), card
    assert (Path(summary["reward"]["models"]["overall"]["model"]) / "README.md").exists()
    over = summary["overoptimization"]  # the small-KL PPO run: where gold peaked along sqrt(KL)
    assert over["sqrt_kl_end"] >= 0 and 0.0 <= over["gold_start"] <= over["gold_peak"] <= 1.0


def test_a_rerun_reuses_every_finished_stage(quick_demo, capsys):
    from posttrain.config import load_config
    from posttrain.demo import run_demo
    from posttrain.recipes.config import DemoConfig

    stamps = {s: (quick_demo / s / "stage.json").stat().st_mtime_ns for s in STAGES}
    run_demo(load_config(DemoConfig, None, ["quick=true", f"run_dir={quick_demo}", "eval_n=10", "final_n=4"]))
    assert {s: (quick_demo / s / "stage.json").stat().st_mtime_ns for s in STAGES} == stamps


def test_the_report_opens_in_headless_chromium(quick_demo, open_page, tmp_path):
    page, problems, requests = open_page(quick_demo / "report.html")
    rows = page.locator("#stage-table tbody tr")
    models = {rows.nth(i).get_attribute("data-model") for i in range(rows.count())}
    assert {"sft", "dpo", "ppo"} <= models
    images = page.eval_on_selector_all("img.plot", "els => els.map(e => e.complete && e.naturalWidth > 100)")
    assert len(images) >= 5 and all(images)
    assert page.locator("img#plot-overoptimization").count() == 1
    assert page.locator("a.model-card").count() >= 4
    page.screenshot(path=str(tmp_path / "demo-report.png"), full_page=True)
    assert problems == [] and all(u.startswith(("file://", "data:")) for u in requests)
