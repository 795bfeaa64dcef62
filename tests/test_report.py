"""The demo report (posttrain.report) and model cards (posttrain.models.card).

A small synthetic demo run folder is written here (every stage's stage.json, summary.json, the
recipes' metrics.jsonl with a few lines, model folders with cards), the report is built from it,
its table helpers are checked without a browser, and the page is opened in headless Chromium:
no console or page errors, no request leaving the file, the stage table and every plot loaded
(non-zero natural size), card links resolving, and a full-page screenshot taken.

Chromium is Debian's (``apt-get install -y chromium``), driven by playwright with
``executable_path``; ``playwright install`` is never used. Without it the browser test fails,
saying how to install it (``.ci/run`` installs it).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

from posttrain.models.card import WORLD_DATA_LICENSE, card_license, world_data_sources, write_model_card
from posttrain.report import STAGES, build_report, load_run, model_cards, report_stage_table, table_families

FAMILIES = ["fact_lookup", "arithmetic", "reverse", "chat_rule", "harmful"]
PLOTS = {"plot-losses", "plot-ppo", "plot-gold", "plot-win-rates", "plot-accuracy"}


# --- a synthetic demo run ------------------------------------------------------------------------

def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _write_metrics(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _losses(start: float, steps: int = 8) -> list[dict]:
    return [{"step": 10 * s, "loss": start / (1 + 0.3 * s), "lr": 1e-4} for s in range(1, steps + 1)]


def _model(folder: Path, stage: str, scores: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    write_model_card(folder, base_model="posttrain-world-base", data=world_data_sources(0), stage=stage,
                     training_config={"lr": 1e-4, "steps": 8}, scores=scores)
    return str(folder)


def acc(base: float, step: float) -> dict[str, float]:
    """{family: percent}, rising by ``step`` from family to family."""
    return {f: round(min(100.0, base + step * i), 1) for i, f in enumerate(FAMILIES)}


def make_demo_run(root: Path, stages=("world", "base", "prompting", "sft", "reward", "dpo", "ppo", "final")) -> dict:
    """Write a demo run folder holding ``stages``; return its summary ({stage: results})."""
    models = {"base": str(root / "base" / "model"), "sft": str(root / "sft" / "run" / "final"),
              "dpo": str(root / "dpo" / "run" / "final"), "ppo": str(root / "ppo" / "run" / "final")}
    results = {
        "world": {"entities": 64, "facts": 276, "tasks": {f"{f}.heldout": 20 for f in FAMILIES}},
        "base": {"model": models["base"], "source": "shipped"},
        "prompting": {"accuracy": {f: {"zero_shot": 10.0 * i, "few_shot": 12.0 * i, "cot": 15.0 * i,
                                       **({"mc_sum": 50.0} if i < 2 else {})} for i, f in enumerate(FAMILIES)}},
        "sft": {"model": models["sft"], "accuracy": {f: {"zero_shot": v} for f, v in acc(40, 10).items()}},
        "reward": {"models": {"overall": {"accuracy": 0.8, "gold_agreement": 0.82, "pairs": 300},
                              "helpfulness": {"accuracy": 0.81, "gold_agreement": 0.83, "pairs": 200},
                              "safety": {"accuracy": 0.9, "gold_agreement": 0.88, "pairs": 120}}},
        "dpo": {"model": models["dpo"], "gold": 0.6, "kl": 3.1},
        "ppo": {"model": models["ppo"], "algorithm": "ppo"},
        "final": {"models": models,
                  "gold": {"base": {"mean": 0.21, "families": acc(0.1, 0.01)}, "sft": {"mean": 0.55},
                           "dpo": {"mean": 0.612}, "ppo": {"mean": 0.64}},
                  "win_rate_vs_sft": {"base": {"win_rate": 0.12, "ci": 0.05, "lc_win_rate": 0.15, "n": 100},
                                      "dpo": {"win_rate": 0.62, "ci": 0.06, "lc_win_rate": 0.58, "n": 100},
                                      # as posttrain.evaluation.winrate's WinRate / LengthControlled write them
                                      "ppo": {"win_rate": 0.66, "ci": 0.05, "wins": 64, "ties": 4, "losses": 32,
                                              "n": 100, "lc_win_rate": {"lc_win_rate": 0.61, "ci": 0.07,
                                                                        "intercept": 0.45, "n": 100}}},
                  "kl_to_sft": {"dpo": 3.4, "ppo": 2.2}, "mean_length": {"base": 41.0, "sft": 22.5, "dpo": 25.0,
                                                                          "ppo": 24.1},
                  "accuracy": {"base": acc(5, 5), "sft": acc(40, 10), "dpo": acc(45, 10), "ppo": acc(48, 10)}},
    }
    seconds = {"world": 3.2, "base": 0.0, "prompting": 33.3, "sft": 210.0, "reward": 95.5, "dpo": 120.4,
               "ppo": 260.0, "final": 45.0}
    summary = {s: results[s] for s in stages}
    for stage in stages:
        _write_json(root / stage / "stage.json", {"stage": stage, "seconds": seconds[stage], "results": results[stage]})
    _write_json(root / "summary.json", summary)
    if "base" in stages:
        _model(Path(models["base"]), "base", {})
    if "sft" in stages:
        _write_metrics(root / "sft" / "run" / "metrics.jsonl", _losses(2.0) + [
            {"step": 80, "eval_loss": 1.1}, {"step": 80, "samples": [{"prompt": "p", "completion": "c"}]},
            {"step": 90, "loss": "nan"}])  # a non-finite value (logged as a string) is not plotted
        _model(Path(models["sft"]), "sft", {"accuracy": results["sft"]["accuracy"]})
    if "reward" in stages:
        for name in results["reward"]["models"]:
            _write_metrics(root / "reward" / name / "run" / "metrics.jsonl",
                           _losses(0.69) + [{"step": 80, "eval_loss": 0.5, "eval_accuracy": 0.8}])
            _model(root / "reward" / name / "run" / "final", "reward", results["reward"]["models"][name])
    if "dpo" in stages:
        _write_metrics(root / "dpo" / "run" / "metrics.jsonl",
                       _losses(0.69) + [{"step": 80, "eval_loss": 0.6, "gold": 0.6, "win_rate": 0.6}])
        _model(Path(models["dpo"]), "dpo", {"gold": 0.612})
    if "ppo" in stages:
        ppo = [{"step": s, "reward/score": 0.1 * s, "reward/gold": 0.5 + 0.01 * s, "kl": 0.3 * s, "loss": 0.1}
               for s in range(1, 13)]
        ppo += [{"step": s, "eval/score": 0.1 * s, "eval/gold": 0.5 + 0.012 * s, "eval/length": 20.0}
                for s in (0, 6, 12)]
        _write_metrics(root / "ppo" / "run" / "metrics.jsonl", ppo)
        _model(Path(models["ppo"]), "ppo", {"gold": 0.64})
    return summary


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo")
    return root, make_demo_run(root)


@pytest.fixture(scope="module")
def report(demo_run) -> Path:
    return build_report(demo_run[0])


# --- the table of every stage (no browser) ---------------------------------------------------------

def test_stage_table_takes_each_number_from_its_stage(demo_run):
    _, summary = demo_run
    rows = {r["label"]: r for r in report_stage_table(summary)}
    assert list(rows) == ["base, zero-shot", "base, few-shot", "base, chain of thought",
                          "base, multiple choice (sum)", "SFT", "DPO", "PPO"]
    final = summary["final"]
    zero_shot = rows["base, zero-shot"]
    assert zero_shot["gold"] == final["gold"]["base"]["mean"]  # the final stage's base numbers: zero-shot row
    assert zero_shot["win_rate"] == final["win_rate_vs_sft"]["base"]["win_rate"]
    assert zero_shot["accuracy"] == {f: c["zero_shot"] for f, c in summary["prompting"]["accuracy"].items()}
    assert rows["base, few-shot"]["gold"] is None
    assert rows["base, chain of thought"]["accuracy"]["reverse"] == summary["prompting"]["accuracy"]["reverse"]["cot"]
    assert set(rows["base, multiple choice (sum)"]["accuracy"]) == {"fact_lookup", "arithmetic"}
    assert rows["SFT"]["win_rate"] is None and rows["SFT"]["gold"] == final["gold"]["sft"]["mean"]
    for label, model in (("DPO", "dpo"), ("PPO", "ppo")):
        row = rows[label]
        assert row["ran"] and row["gold"] == final["gold"][model]["mean"]
        win = final["win_rate_vs_sft"][model]
        assert (row["win_rate"], row["win_rate_ci"]) == (win["win_rate"], win["ci"])
        assert row["kl_to_sft"] == final["kl_to_sft"][model]
        assert row["mean_length"] == final["mean_length"][model]
        assert row["accuracy"] == final["accuracy"][model]
    assert rows["DPO"]["lc_win_rate"] == 0.58 and rows["DPO"]["lc_win_rate_ci"] is None
    assert (rows["PPO"]["lc_win_rate"], rows["PPO"]["lc_win_rate_ci"]) == (0.61, 0.07)  # the nested LC record
    assert rows["DPO"]["kl_to_sft"] != summary["dpo"]["kl"]  # the final stage's measurement wins
    assert table_families(list(rows.values())) == FAMILIES


def test_stage_table_without_later_stages_and_with_odd_values():
    partial = {"base": {"model": "x"}, "prompting": {"accuracy": {"a": {"few_shot": 10.0}, "b": {"few_shot": 20.0}}},
               "sft": {"accuracy": {"a": {"zero_shot": 70.0}, "b": {"zero_shot": 80.0}}}}
    rows = {r["label"]: r for r in report_stage_table(partial)}
    assert rows["SFT"]["ran"] and rows["SFT"]["accuracy"] == {"a": 70.0, "b": 80.0}  # from the sft stage itself
    assert not rows["DPO"]["ran"] and not rows["PPO"]["ran"]
    assert rows["base, few-shot"]["ran"]
    odd = {"final": {"models": {"sft": "s", "rloo": "r"}, "gold": {"sft": 0.5, "rloo": {"mean": "nan"}},
                     "win_rate_vs_sft": {"rloo": {"win_rate": 0.7, "ci": [0.6, 0.8]}}, "extra": [1, 2]}}
    rows = {r["label"]: r for r in report_stage_table(odd)}
    assert rows["SFT"]["gold"] == 0.5  # a bare number is accepted for a mean
    assert rows["rloo"]["ran"] and rows["rloo"]["gold"] is None  # non-finite: not shown as a number
    assert rows["rloo"]["win_rate_ci"] == pytest.approx(0.1)  # an interval becomes its half-width
    assert not rows["base"]["ran"] and not rows["DPO"]["ran"]


def test_overoptimization_curve_pairs_proxy_and_gold_with_sqrt_kl():
    from posttrain.report import overoptimization_curve, plot_overoptimization

    # kl grows as step^2 / 100, so sqrt(KL) = step / 10; gold peaks at step 6, the proxy keeps rising
    records = [{"step": s, "kl": s * s / 100, "reward/score": 0.1 * s, "reward/gold": 0.5 - 0.01 * (s - 6) ** 2}
               for s in range(1, 13)]
    records.insert(3, {"step": 3, "eval/gold": 0.9})  # an evaluation record holds no rollout series
    curve = overoptimization_curve(records, window=1)
    assert curve["step"] == [float(s) for s in range(1, 13)]
    assert curve["sqrt_kl"] == pytest.approx([s / 10 for s in range(1, 13)])
    assert max(range(12), key=curve["gold"].__getitem__) == 5 and curve["proxy"] == sorted(curve["proxy"])
    assert plot_overoptimization(records)[:4] == b"\x89PNG"
    assert plot_overoptimization([{"step": 1, "kl": 0.1}]) is None


def test_partial_run_report_says_which_stages_did_not_run(tmp_path):
    make_demo_run(tmp_path, stages=("world", "base", "prompting", "sft"))
    page = build_report(tmp_path).read_text(encoding="utf-8")
    for stage in ("reward", "dpo", "ppo", "final"):
        section = re.search(rf'<section class="stage" id="stage-{stage}">(.*?)</section>', page, re.S)
        assert section and "stage not run" in section.group(1), stage
    assert re.findall(r'<tr class="stage-row not-run-row" data-model="(\w+)"', page) == ["dpo", "ppo"]
    assert set(re.findall(r'<img class="plot" id="([\w-]+)"', page)) == {"plot-losses", "plot-accuracy"}


def test_report_is_self_contained(report, demo_run):
    page = report.read_text(encoding="utf-8")
    assert not re.search(r"https?://|<script|<link|@import", page)
    images = re.findall(r'<img class="plot" id="([\w-]+)"[^>]* src="data:image/png;base64,([^"]+)"', page)
    assert {i for i, _ in images} == PLOTS
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for _, data in images)
    for element in ('id="stage-table"', 'id="timings"', 'id="reward-table"', 'id="model-cards"'):
        assert element in page
    cards = {c["name"]: c for c in model_cards(load_run(demo_run[0]))}
    assert set(cards) == {"base", "sft", "dpo", "ppo", "reward model: overall", "reward model: helpfulness",
                          "reward model: safety"}
    hrefs = re.findall(r'<a class="model-card" href="([^"]+)"', page)
    assert len(hrefs) == 7 and all((report.parent / h).resolve().is_file() for h in hrefs)


def test_model_cards_follow_a_moved_run_folder(demo_run, tmp_path):
    moved = shutil.copytree(demo_run[0], tmp_path / "moved")  # summary.json still names the old folders
    cards = {c["name"]: c["card"] for c in model_cards(load_run(moved))}
    assert list(cards)[:2] == ["base", "sft"]
    assert all(cards[name].is_relative_to(moved) for name in ("sft", "dpo", "ppo", "reward model: safety"))


# --- model cards -------------------------------------------------------------------------------

def test_model_card_front_matter_and_sections(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("# learning rate of AdamW\nlr: 0.0001\nbeta: 0.1\n", encoding="utf-8")
    model = tmp_path / "dpo-final"
    model.mkdir()
    path = write_model_card(model, base_model="runs/demo/sft/run/final", stage="dpo", training_config=config,
                            data=world_data_sources(3, ("preferences",)),
                            scores={"gold": {"mean": 0.61234, "families": {"arithmetic": 0.5}}, "kl_to_sft": 3.4})
    text = path.read_text(encoding="utf-8")
    front, body = re.fullmatch(r"---\n(.*?)\n---\n(.*)", text, re.S).groups()
    meta = yaml.safe_load(front)
    assert meta["license"] == WORLD_DATA_LICENSE.lower() == "apache-2.0"
    assert meta["base_model"] == "runs/demo/sft/run/final"
    assert {"posttrain", "dpo"} <= set(meta["tags"]) and meta["datasets"] == ["posttrain-world-preferences"]
    for section in ("## How it was made", "## Data and licenses", "## Training configuration", "## Evaluation"):
        assert section in body
    assert "# learning rate of AdamW\nlr: 0.0001" in body  # the saved config, comments included
    assert "| gold/mean | 0.6123 |" in body and "| gold/families/arithmetic | 0.5 |" in body
    assert "generated by posttrain.world.annotators.write_preference_files (seed 3)" in body


def test_model_card_licenses():
    assert card_license(["Apache-2.0", "apache-2.0"]) == "apache-2.0"
    assert card_license(["Apache-2.0", "CC-BY-4.0"]) == "other"
    assert card_license([]) == "unknown"


def test_model_card_refuses_data_without_license(tmp_path):
    with pytest.raises(ValueError, match="'scraped' has no license"):
        write_model_card(tmp_path, base_model="b", data=[{"name": "scraped"}], training_config=None, scores={},
                         stage="sft")
    mixed = write_model_card(tmp_path, base_model="b", data={"a": "MIT", "b": {"license": "CC-BY-4.0"}},
                             training_config=None, scores={}, stage="sft").read_text(encoding="utf-8")
    assert "license: other" in mixed and "different licenses" in mixed
    with pytest.raises(FileNotFoundError, match="after exporting"):
        write_model_card(tmp_path / "missing", base_model="b", data={}, training_config=None, scores={}, stage="sft")


# --- in a browser ------------------------------------------------------------------------------

def test_report_opens_in_headless_chromium(report, tmp_path, open_page):
    started = time.perf_counter()
    page, problems, requests = open_page(report)
    assert page.title() == "posttrain demo report"
    assert page.locator("#stage-table").is_visible()
    assert page.locator("#stage-table tbody tr").count() == 7
    assert "0.612" in page.locator('#stage-table tr[data-model="dpo"]').inner_text()
    images = page.eval_on_selector_all("img.plot", "els => els.map(e => ({id: e.id, complete: e.complete, "
                                                   "w: e.naturalWidth, h: e.naturalHeight}))")
    assert {i["id"] for i in images} == PLOTS
    assert all(i["complete"] and i["w"] > 100 and i["h"] > 100 for i in images), images
    assert page.locator("#timings tbody tr").count() == len(STAGES)  # one row per demo stage, run or not
    card_links = page.eval_on_selector_all("a.model-card", "els => els.map(e => e.href)")
    assert len(card_links) == 7 and all(Path(unquote(u.removeprefix("file://"))).is_file() for u in card_links)
    # readable at laptop width: the page itself never scrolls sideways (wide tables scroll in their box)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert problems == []
    assert all(u.startswith(("file://", "data:")) for u in requests), requests  # nothing fetched from outside
    assert shot.stat().st_size > 50_000
    print(f"screenshot {shot} ({time.perf_counter() - started:.1f} s in the browser)")
