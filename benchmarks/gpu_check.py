"""Check a GPU machine in one command and write one Markdown report (`make gpu-check`).

    .venv/bin/python benchmarks/gpu_check.py [--out gpu-check.md] [--quick]

In order, each with a time limit (180 + 120 + 120 + 90 + 60 s) so that the whole stays under
10 minutes:
1. the CUDA tests (every test file that has a CUDA-only test, run on the GPU);
2. benchmarks/speed.py on the device (bf16, eager and compiled, train and predict);
3. benchmarks/pipeline.py on the device (host capacity, end to end against model only, and
   the step overhead: a tiny UNet through train() against a bare loop, in steps/s);
4. with two GPUs or more: a 2-process NCCL training run through ``--nproc 2``, then its
   resume, checking that the resumed run starts where the first one stopped.
The report (default ``gpu-check.md``) has the machine, every command, its status, time and
output, ready to paste into benchmarks/RESULTS.md. The exit status is 0 only if every step
passed.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def cuda_test_files() -> list[str]:
    return sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests").glob("test_*.py")
                  if "torch.cuda.is_available()" in path.read_text())


def run(title: str, command: list[str], limit_s: int) -> dict:
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              timeout=limit_s)
        status, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        status = "timeout"
        output = f"{exc.stdout or ''}{exc.stderr or ''}\n(stopped after {limit_s} s)"
        output = output if isinstance(output, str) else output.decode(errors="replace")
    step = {"title": title, "command": " ".join(command), "status": status,
            "seconds": time.monotonic() - start, "output": output}
    print(f"gpu-check: {title}: {'passed' if status == 0 else f'FAILED ({status})'} "
          f"in {step['seconds']:.0f} s", file=sys.stderr, flush=True)
    return step


def ddp_steps(gpus: int, quick: bool) -> list[dict]:
    if gpus < 2:
        return [{"title": "2-process NCCL run with a resume", "command": "-", "status": "skipped",
                 "seconds": 0.0, "output": f"{gpus} GPU on this machine: needs 2 or more"}]
    run_dir = Path(tempfile.mkdtemp(prefix="gpu-check-ddp-")) / "run"
    steps = 10 if quick else 40
    common = [PYTHON, "-m", "napari_unet.cli", "train", "--preset", "industrial", "--sample",
              "dagm", "--nproc", "2", "--device", "cuda", "--amp", "bf16", "--patch-size",
              "256", "--batch-size", "8", "--checkpoint-every", str(steps // 2), "--events",
              "jsonl", "--out", str(run_dir)]
    first = run("2-process NCCL run", common + ["--steps", str(steps)], 90)
    second = run("its resume (2 processes)", common + ["--steps", str(steps * 3 // 2),
                                                       "--resume"], 60)
    if second["status"] == 0:
        events = [json.loads(line) for line in second["output"].splitlines()
                  if line.startswith("{")]
        starts = [e["start_step"] for e in events if e.get("event") == "Started"]
        if starts != [steps]:
            second["status"] = "wrong start"
            second["output"] += f"\nresumed at {starts}, expected [{steps}]"
    return [first, second]


def machine() -> dict:
    import torch
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "cpu cores": os.cpu_count()}
    if info["gpus"]:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu memory GiB"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30)
    with contextlib.suppress(OSError):
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                        capture_output=True, text=True).stdout.strip()
    return info


def report(info: dict, steps: list[dict]) -> str:
    lines = ["# GPU check", "", "| | |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in info.items()]
    lines += ["", "| step | status | seconds |", "| --- | --- | --- |"]
    lines += [f"| {s['title']} | {'passed' if s['status'] == 0 else s['status']} | "
              f"{s['seconds']:.0f} |" for s in steps]
    for s in steps:
        lines += ["", f"## {s['title']}", "", f"`{s['command']}`", "", "```",
                  s["output"].strip()[-6000:], "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "gpu-check.md")
    parser.add_argument("--quick", action="store_true", help="fewer steps everywhere")
    parser.add_argument("--tiny", action="store_true",
                        help="a check that it runs (the test suite): on a machine without a "
                             "GPU the report is written with every CUDA step 'no GPU'")
    args = parser.parse_args(argv)
    args.quick = args.quick or args.tiny
    info = machine()
    if args.tiny and not info["gpus"]:
        return write_report(args.out, info, no_gpu_steps(info))
    if not info["gpus"]:
        print(f"gpu-check: no CUDA GPU visible to torch {info['torch']}: run it on a GPU "
              "machine with torch's CUDA wheel in .venv (.venv/bin/pip install torch==2.13.0 "
              "--index-url https://download.pytorch.org/whl/cu128)", file=sys.stderr)
        return 2
    steps_arg = ["--steps", "5" if args.quick else "10", "--warmup", "3"]
    steps = [
        run("CUDA tests", [PYTHON, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           *cuda_test_files()], 180),
        run("benchmarks/speed.py on the GPU",
            [PYTHON, "benchmarks/speed.py", "--device", "cuda", "--amp", "bf16", "--compile",
             "both", "--no-peaks", *steps_arg], 120),
        run("benchmarks/pipeline.py on the GPU",
            [PYTHON, "benchmarks/pipeline.py", "--device", "cuda", "--amp", "bf16",
             *(["--steps", "10"] if args.quick else [])], 120),
    ]
    steps += ddp_steps(info["gpus"], args.quick)
    return write_report(args.out, info, steps)


def no_gpu_steps(info: dict) -> list[dict]:
    """The steps as skipped, for a machine without a GPU (--tiny)."""
    return [{"title": title, "command": "-", "status": "skipped", "seconds": 0.0,
             "output": f"no GPU: torch {info['torch']} sees no CUDA device"}
            for title in ("CUDA tests", "benchmarks/speed.py on the GPU",
                          "benchmarks/pipeline.py on the GPU",
                          "2-process NCCL run with a resume")]


def write_report(out: Path, info: dict, steps: list[dict]) -> int:
    """Write the report atomically; 0 only if every step passed (or was skipped)."""
    temporary = out.with_name(f".{out.name}.tmp")
    temporary.write_text(report(info, steps))
    temporary.replace(out)
    print(f"gpu-check: report written to {out}", file=sys.stderr)
    print(report(info, steps).split("\n## ")[0])  # the tables
    return 0 if all(s["status"] in (0, "skipped") for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
