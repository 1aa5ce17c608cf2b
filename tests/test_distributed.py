"""DDP on CPU with gloo, 2 processes through `napari_unet train --nproc 2` (torchrun)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from napari_unet.engine import load_checkpoint

COMMON = ["train", "--preset", "industrial", "--sample", "dagm", "--loss", "ce", "--steps", "5",
          "--patch-size", "64", "--base-channels", "8", "--amp", "off", "--device", "cpu",
          "--checkpoint-every", "1000"]


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "napari_unet.cli", *args], capture_output=True,
                          text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    single = cli(*COMMON, "--batch-size", "4", "--out", str(root / "single"))
    assert single.returncode == 0, single.stderr
    double = cli(*COMMON, "--batch-size", "2", "--nproc", "2", "--out", str(root / "double"),
                 "--events", "jsonl")
    assert double.returncode == 0, double.stderr[-2000:]
    return root, double.stdout


def test_two_processes_equal_one_with_the_same_global_batch(runs):
    root, stdout = runs
    started = json.loads(stdout.splitlines()[0])
    assert started["world_size"] == 2 and started["global_batch_size"] == 4
    one = load_checkpoint(root / "single" / "checkpoints" / "last.pt").model.state_dict()
    two = load_checkpoint(root / "double" / "checkpoints" / "last.pt").model.state_dict()
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert diff < 1e-5, diff
    assert any(float((one[k] - torch.zeros_like(one[k])).abs().max()) > 0 for k in one)


def test_only_rank_zero_writes_events(runs):
    _, stdout = runs
    names = [json.loads(line)["event"] for line in stdout.splitlines()]
    assert names.count("Started") == 1 and names.count("Finished") == 1


def test_a_two_process_checkpoint_resumes_in_one_process(runs):
    root, _ = runs
    resumed = cli(*COMMON, "--batch-size", "4", "--steps", "7", "--resume", "--out",
                  str(root / "double"), "--events", "jsonl")
    assert resumed.returncode == 0, resumed.stderr
    events = [json.loads(line) for line in resumed.stdout.splitlines()]
    assert events[0]["start_step"] == 5 and events[0]["world_size"] == 1
    assert events[-1]["event"] == "Finished" and events[-1]["step"] == 7


def _worker_pid(marker: str, rank: int):
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in cmdline and f"RANK={rank}".encode() in environ \
                and b"torch.distributed.run" not in cmdline:
            return int(proc.name)
    return None


def test_killing_one_rank_ends_the_job(tmp_path):
    run = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_unet.cli", *COMMON, "--steps", "100000", "--batch-size",
         "2", "--nproc", "2", "--out", str(run), "--events", "jsonl"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if json.loads(line)["event"] == "Progress":
            break
    pid = _worker_pid(str(run), 1)
    assert pid is not None
    start = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    code = process.wait(timeout=90)
    elapsed = time.monotonic() - start
    stderr = process.stderr.read()
    assert code != 0 and elapsed < 60, (code, elapsed)
    assert "rank" in stderr.lower() and "1" in stderr


def test_cancel_stops_every_rank_after_the_same_step_and_rank_zero_saves(tmp_path):
    run = tmp_path / "cancelled"
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_unet.cli", *COMMON, "--steps", "100000", "--batch-size",
         "2", "--nproc", "2", "--out", str(run), "--events", "jsonl"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    steps = []
    for line in process.stdout:
        event = json.loads(line)
        if event["event"] == "Progress":
            steps.append(event["step"])
            if len(steps) == 2:
                process.send_signal(signal.SIGINT)  # as the Train widget's Cancel does
    code = process.wait(timeout=60)
    stderr = process.stderr.read()
    assert code == 130, stderr[-2000:]
    # the ranks agreed on a step boundary: rank 0 saved the last step it reported
    assert load_checkpoint(run / "checkpoints" / "last.pt").step == steps[-1]
    assert "cancelled" in stderr
