"""Shared fixtures: a tiny tokenizer and Llama model built offline, once per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import background  # tests/background.py: fixtures made by a background process
import pytest

TINY_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of Zorbia? The capital of Zorbia is Quell.",
    "user assistant system Hello! How can I help you today?",
    "Add 12 and 7. The answer is 19.",
    "Answer in capitals. OK, I WILL ANSWER IN CAPITALS.",
    "Sort these words: pear, apple, fig. Sorted: apple, fig, pear.",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from posttrain.models.tiny import train_bpe_tokenizer

    return train_bpe_tokenizer(TINY_TEXT, vocab_size=400)


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    from posttrain.models.tiny import tiny_llama

    return tiny_llama(len(tiny_tokenizer), hidden_size=32, num_layers=2, num_heads=4)


def save_tiny_llama(path, tokenizer, seed: int = 0, tie_word_embeddings: bool = True):
    """Save a random tiny Llama for ``tokenizer`` as a plain HF folder (safetensors, tokenizer, chat
    template) at ``path``; return the path. Untied models answer differently from one another
    (a random tied model greedily repeats its last input token)."""
    from posttrain.models.tiny import tiny_llama

    model = tiny_llama(len(tokenizer), hidden_size=32, num_layers=2, num_heads=4, seed=seed,
                       tie_word_embeddings=tie_word_embeddings)
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.config, key, getattr(tokenizer, key))
        setattr(model.generation_config, key, getattr(tokenizer, key))
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A plain HF folder (safetensors + tokenizer + chat template) of a random tiny Llama."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_model"), tiny_tokenizer)


@pytest.fixture(scope="session")
def world_sft(request, tmp_path_factory):
    """configs/sft/world.yaml trained once per session on the shipped base model, in the background
    (tests/background.py) while other tests run.

    Returns the run directory: ``final/`` is the exported chat model (the starting point of the
    reward-model, DPO, PPO and live-server tests) and ``eval/results.json`` its held-out exact match
    per family. Skips when the world's base model is not shipped. Development: set
    ``POSTTRAIN_DEV_SFT`` to a finished ``posttrain sft --config configs/sft/world.yaml`` run folder
    (one holding ``final/``) to use it instead.
    """
    if os.environ.get("POSTTRAIN_DEV_SFT"):
        return Path(os.environ["POSTTRAIN_DEV_SFT"])
    return background_result(request, tmp_path_factory, "world_sft")


@pytest.fixture(scope="session")
def synth_world(request, tmp_path_factory):
    """tests/test_synth.py's world data sets and the six SFT runs on them, made in the background."""
    return background_result(request, tmp_path_factory, "synth_world")


@pytest.fixture(scope="session")
def rlaif_world(request, tmp_path_factory, world_sft):
    """Reward models on the simulated annotators' labels and on the world judge's (tests/test_label.py)."""
    return background_result(request, tmp_path_factory, "rlaif_world")


def background_result(request, tmp_path_factory, job: str) -> Path:
    """The folder of a background job: from the session's background process, else made here."""
    why = background.needs_base_model()
    if why:
        pytest.skip(why)
    runner = getattr(request.config, "_posttrain_background", None)
    if runner is not None and job in runner.jobs:
        return runner.result(job)
    out = tmp_path_factory.mktemp(job)
    needs = {"sft": request.getfixturevalue(background.NEEDS[job])} if job in background.NEEDS else {}
    background.JOBS[job](out, **needs)
    return out


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what will not run
def pytest_collection_modifyitems(session, config, items):
    """When selected tests need background jobs (tests/background.py): start them, run those tests
    last, and give this process's torch one thread, so the two cores serve two lanes."""
    def needs(item):
        return [job for job in background.JOBS if job in item.fixturenames
                and not (job == "world_sft" and os.environ.get("POSTTRAIN_DEV_SFT"))]

    jobs = [job for job in background.JOBS if any(job in needs(item) for item in items)]
    if not jobs or config.option.collectonly or background.needs_base_model():
        return
    items.sort(key=lambda item: bool(needs(item)))  # stable: the others keep their order
    import torch

    torch.set_num_threads(1)
    config._posttrain_background = background.Background(Path(tempfile.mkdtemp(prefix="posttrain-bg-")),
                                                          background.with_needs(jobs))


def pytest_unconfigure(config):
    runner = getattr(config, "_posttrain_background", None)
    if runner is not None:
        runner.stop()
        shutil.rmtree(runner.root, ignore_errors=True)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def chromium():
    """Debian's headless Chromium driven by playwright (never `playwright install`): a browser for
    tests that open the pages posttrain writes. Fails, saying how to install it, when missing."""
    import os

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `pip install -e '.[test]'` (playwright==1.65.2; it drives the "
                    "system Chromium, so never run `playwright install`)", pytrace=False)
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: tests open posttrain's HTML pages in Debian's headless "
                    f"Chromium. Install it with `apt-get update && apt-get install -y chromium` "
                    f"(.ci/run does this in CI).", pytrace=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def open_page(chromium):
    """open_page(path) -> (page, problems, requests): the file opened in a fresh 1280-wide page,
    with every console error, page error and failed request collected in ``problems`` and every
    URL asked for in ``requests``."""
    pages = []

    def _open(path):
        page = chromium.new_page(viewport={"width": 1280, "height": 900})
        pages.append(page)
        problems, requests = [], []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(path.as_uri(), wait_until="load")
        return page, problems, requests

    yield _open
    for page in pages:
        page.close()


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny models run faster without threading overhead, and the suite shares two cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
