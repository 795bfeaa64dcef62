"""`posttrain synth <method>`: make instruction data with a teacher, write it and report what was kept.

    posttrain synth self-instruct teacher.kind=world world.examples=10
    posttrain synth distill --config configs/synth/distill-world.yaml
    posttrain synth distill teacher.kind=openai teacher.base_url=http://127.0.0.1:8000/v1 teacher.model=my-model \\
        inputs=[prompts.jsonl]

Writes ``output`` (JSONL conversations, each with its provenance in ``meta``: method, teacher,
prompt template, date, license, source) and ``<output>.report.json`` (generated, kept and dropped
per stage, with reasons), and prints the report. Every response is cached under ``cache_dir``: a
run stopped by a dead server resumes from where it was when run again.
"""

from __future__ import annotations

from pathlib import Path

from posttrain.errors import UserError
from posttrain.files import write_json_atomic, write_jsonl_atomic
from posttrain.synth.common import Provenance, read_seeds
from posttrain.synth.config import METHODS, SynthConfig
from posttrain.synth.distill import distill
from posttrain.synth.evol_instruct import evol_instruct
from posttrain.synth.gatt import gatt
from posttrain.synth.report import SynthReport
from posttrain.synth.self_chat import self_chat
from posttrain.synth.self_instruct import self_instruct
from posttrain.synth.teachers import TeacherError, cached_teacher, teacher_license

RUNNERS = {"self-instruct": self_instruct, "evol-instruct": evol_instruct, "self-chat": self_chat,
           "distill": distill, "gatt": gatt}


def output_paths(cfg: SynthConfig) -> tuple[Path, Path]:
    """(data file, report file)."""
    data = Path(cfg.output or f"runs/synth/{cfg.method}.jsonl")
    return data, data.with_name(data.name.removesuffix(".jsonl") + ".report.json")


def synth(cfg: SynthConfig) -> Path:
    """Run ``cfg.method``; return the data file written."""
    if cfg.method not in METHODS:
        raise UserError(f"synth: unknown method {cfg.method!r}; choose among {', '.join(METHODS)} "
                        f"(posttrain synth <method> ...)")
    from rich.console import Console

    console = Console(stderr=True)
    seeds = read_seeds(cfg) if cfg.method != "self-chat" else []
    teaching = cached_teacher(cfg.teacher, cfg.cache_dir, cfg.world.seed, cfg.progress)
    cache = teaching.cache
    report = SynthReport(cfg.method, teaching.identity)
    stamp = Provenance(cfg, teaching.identity, cfg.license or teacher_license(cfg.teacher))
    try:
        records = RUNNERS[cfg.method](cfg, teaching, seeds, report, stamp)
    except TeacherError as e:
        raise TeacherError(f"{e}\n{teaching.sent} responses arrived in this run and {len(cache)} are cached in "
                           f"{cache.root}: nothing is lost; run the same command again to resume") from e
    data_path, report_path = output_paths(cfg)
    write_jsonl_atomic(data_path, (r.to_dict() for r in records))
    report.records, report.cache_hits, report.requests_sent = len(records), teaching.hits, teaching.sent
    report.extra.update(output=str(data_path), license=stamp.license, date=stamp.date)
    write_json_atomic(report_path, report.to_dict())
    console.print(report.table())
    for name, stage in report.stages.items():
        for reason, example in stage.examples.items():
            console.print(f"[dim]{name}, dropped ({reason}), e.g.:[/dim] {example[:160]!r}", highlight=False)
    if "stopped" in report.extra:
        console.print(f"[yellow]{report.extra['stopped']}[/yellow]")
    console.print(f"{len(records)} records written to {data_path}; report in {report_path}")
    return data_path
