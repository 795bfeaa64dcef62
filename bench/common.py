"""What every bench shares: memory probes, forked trials, alternating rounds and medians, the
cross-checks' verdict, and this CPU's fp32 matmul peak with the model FLOPs that an MFU divides by it.

MFU here is *model* FLOP utilisation: the FLOPs the work needs, whatever a framework spends on top
(padding, a prompt run twice, logits of positions that predict nothing), over the machine's
measured peak. For training on sequences of ``n`` tokens with ``t`` target tokens:

    6 * N * n               every token through the non-embedding weights, forward and backward
  + 6 * d * V * t           the LM head at the positions that predict a target
  + 12 * L * d * a          attention: QK^T and AV over ``a`` (query, key) pairs, x3 for the backward

(``N`` non-embedding parameters, ``d`` hidden size, ``L`` layers, ``V`` vocabulary; a causal sequence
has ``a = n**2 / 2``, a response of ``r`` tokens after a prompt of ``p`` adds ``r * p + r**2 / 2``). A
prompt shared by two responses is work done once. Both sides of a bench get the same FLOPs for the
same examples, so their MFUs stand in the ratio of their speeds.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- memory and processes


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> int:
    """Reset the peak RSS to the current RSS (Linux >= 4.0) and return the current RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def peak_mb(base: int) -> float:
    """Peak RSS since :func:`reset_peak` returned ``base``, over it, in MB."""
    return (_status("VmHWM") - base) / 2**20


def in_child(fn, *args):
    """Run ``fn(*args)`` in a forked process and return its result (or raise its error)."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()

    def target():
        try:
            queue.put(("ok", fn(*args)))
        except BaseException:  # noqa: BLE001 - the parent re-raises it with the traceback
            queue.put(("error", traceback.format_exc()))

    proc = ctx.Process(target=target)
    proc.start()
    status, value = queue.get()
    proc.join()
    if status == "error":
        raise RuntimeError(f"{fn.__name__}{args[:1]} failed in its process:\n{value}")
    return value


# --------------------------------------------------------------------------- rounds and rates


def schedule(trials: list, rounds: int):
    """``(round, trial)`` in the order to run them: each round alternates the frameworks (the caller
    interleaves them in ``trials``) and every other round runs the list backwards, so neither side
    always goes first or last while the machine's load drifts."""
    for r in range(rounds):
        for trial in trials if r % 2 == 0 else trials[::-1]:
            yield r, trial


def step_clock() -> tuple[float, float]:
    """(wall clock, this process's CPU time) now: what a trial records at the end of each step."""
    return time.perf_counter(), time.process_time()


def rates(ends: list[tuple[float, float]], work: list[float]) -> dict:
    """Work per wall second and per CPU second from the end of step 1 to the end of the last (step 1's
    one-time allocations excluded), and ``noise``: the relative standard error of that rate from the
    spread of the steps' times per unit of work (under 0.05 asked of every timed trial)."""
    n = len(ends)
    done = sum(work[1:n])
    per_unit = [(b[0] - a[0]) / w for a, b, w in zip(ends, ends[1:], work[1:n])]
    noise = statistics.stdev(per_unit) / statistics.mean(per_unit) / math.sqrt(len(per_unit)) \
        if len(per_unit) > 1 else float("nan")
    return {"per_s": done / (ends[-1][0] - ends[0][0]), "per_cpu_s": done / (ends[-1][1] - ends[0][1]),
            "noise": noise, "steps": n}


def with_rates(res: dict, unit: str, done: list[float], flops: list[float]) -> dict:
    """A trial's result with its step clock (``ends``) turned into rates: ``<unit>_per_s``, ``<unit>_per_cpu_s``,
    ``<unit>_noise`` from the work done each step, and ``flops_per_cpu_s`` from each step's model FLOPs."""
    ends = res.pop("ends")
    res.update({f"{unit}_{k}": v for k, v in rates(ends, done).items()})
    res["flops_per_cpu_s"] = rates(ends, flops)["per_cpu_s"]
    return res


def grouped_order(lengths: list[int], batch: int, accum: int = 1) -> list[int]:
    """One order of the examples grouped by length (posttrain's sampler's, seed 0), to give both sides."""
    from posttrain.training.sampler import LengthGroupedSampler

    sampler = LengthGroupedSampler(len(lengths), batch, accum, 1, 0, 0, lengths=tuple(lengths))
    steps = len(lengths) // (batch * accum)
    return [i for _, (_, _, micro) in zip(range(steps), sampler.iterate()) for ids in micro for i in ids]


def medians(runs: list[dict]) -> dict:
    """Each numeric field's median over the rounds (other fields from the first run)."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in runs)
    return out


def best(results: dict[str, dict], speed: str, within: float = 0.05) -> str:
    """A side's best setting: the least memory among those within ``within`` of its fastest (settings
    closer than that are not told apart by these measurements; a user would take the smaller one)."""
    fastest = max(r[speed] for r in results.values())
    return min((s for s, r in results.items() if r[speed] >= (1 - within) * fastest), key=lambda s: results[s]["peak_mb"])


def check(ok: bool, what: str) -> None:
    """A cross-check's verdict: printed either way; on disagreement the bench stops with a non-zero exit."""
    print(f"cross-check {'ok' if ok else 'FAILED'}: {what}", flush=True)
    if not ok:
        sys.exit(f"the two sides do not compute the same thing ({what}); their timings would not compare")


# --------------------------------------------------------------------------- the machine's limit


def matmul_peak(threads: int, size: int = 2048, repeats: int = 7) -> dict:
    """This CPU's fp32 matmul rate at ``threads`` torch threads: the best of ``repeats`` products of two
    ``size`` x ``size`` matrices (``2 * size**3`` FLOPs each), per wall second (``per_s``) and per CPU
    second of the process (``per_cpu_s``, for benches that count CPU time), in a forked process (torch's
    OpenMP pool must not start in the parent of the trials: forked children would hang in it)."""
    return in_child(_matmul_peak, threads, size, repeats)


def _matmul_peak(threads: int, size: int, repeats: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    wall = cpu = float("inf")
    for _ in range(repeats):
        start = step_clock()
        torch.mm(a, b)
        end = step_clock()
        wall, cpu = min(wall, end[0] - start[0]), min(cpu, end[1] - start[1])
    return {"per_s": 2 * size**3 / wall, "per_cpu_s": 2 * size**3 / cpu}


def torch_threads() -> int:
    """torch's default thread count, asked in a forked process (see :func:`matmul_peak`)."""
    import torch

    return in_child(torch.get_num_threads)


@dataclass(frozen=True)
class Shape:
    """What the model FLOPs of a decoder depend on (see the module docstring)."""

    params: int
    """Non-embedding parameters ``N`` (embeddings, LM head and scalar heads excluded)."""
    hidden: int
    """Hidden size ``d``."""
    layers: int
    """Decoder layers ``L``."""
    vocab: int
    """Vocabulary ``V`` (the LM head's width)."""

    @classmethod
    def of(cls, model) -> "Shape":
        skip = ("embed_tokens", "lm_head", "score")
        params = sum(p.numel() for n, p in model.named_parameters() if not any(s in n for s in skip))
        c = model.config
        return cls(params, c.hidden_size, c.num_hidden_layers, c.vocab_size)

    def train_flops(self, tokens: int, targets: int, attended: float) -> float:
        """Forward + backward FLOPs of ``tokens`` tokens, ``targets`` of them LM-head targets, with
        ``attended`` (query, key) pairs of attention."""
        return 6 * self.params * tokens + 6 * self.hidden * self.vocab * targets + 12 * self.layers * self.hidden * attended


def causal_pairs(n: int) -> float:
    """(query, key) pairs of causal attention over ``n`` tokens."""
    return n * n / 2


def prefix_pairs(prompt: int, responses: list[int]) -> float:
    """(query, key) pairs of a prompt run once and responses that each attend to it and to themselves."""
    return causal_pairs(prompt) + sum(r * prompt + causal_pairs(r) for r in responses)


def mfu_line(name: str, flops_per_s: float, peak: float) -> str:
    return f"{name}: {flops_per_s / 1e9:6.1f} GFLOP/s of model work, MFU {flops_per_s / peak:.1%}"
