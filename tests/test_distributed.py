"""DDP on CPU with gloo, 2 processes through `napari_unet train --nproc 2` (torchrun)."""
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from process_support import cli, failure_text, read_events_until, start_cli, wait_for_exit

from napari_unet.engine import evaluate, load_checkpoint, sample_dataset, threads_per_process

COMMON = ["train", "--preset", "industrial", "--sample", "dagm", "--loss", "ce", "--steps", "5",
          "--patch-size", "64", "--base-channels", "8", "--amp", "off", "--device", "cpu",
          "--checkpoint-every", "1000"]
# fold 0 holds 2 of dagm's 8 images: under 2 processes each rank validates one of them
VALIDATED = ["--fold", "0", "--val-every", "5"]


def _events(stdout):
    return [json.loads(line) for line in stdout.splitlines()]


# In every process of the runs below (a sitecustomize on PYTHONPATH): each training step's
# prepared batch (what the optimizer step is given), the first step's gradient (all-reduced
# under DDP) and the weights after it, saved to NAPARI_UNET_TEST_RECORD; and the batch thread
# and the training thread of the two ranks are made to lag at different steps, so that a
# batch cut ahead of its step (or late) would show.
RECORD_HOOK = """
import os
record = os.environ.get("NAPARI_UNET_TEST_RECORD")
if record:
    import time
    import torch
    from napari_unet.engine.training import pipeline, steps
    rank = int(os.environ.get("RANK", "0"))
    real_cut, real_step, done = pipeline.cut_batch, steps.optimizer_step, []

    def cut_batch(sampler, step, *args, **kwargs):
        time.sleep(0.05 * (rank == 1 and step % 2 == 0))
        return real_cut(sampler, step, *args, **kwargs)

    def optimizer_step(net, model, x, y, *args):
        loss = real_step(net, model, x, y, *args)
        saved = {"x": x, "y": y}
        if not done:
            saved["grad"] = {n: p.grad.clone() for n, p in model.named_parameters()}
            saved["weights"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        torch.save(saved, os.path.join(record, f"rank{rank}-step{len(done)}.pt"))
        done.append(len(done))
        time.sleep(0.05 * (rank == 0 and len(done) % 2 == 1))
        return loss

    pipeline.cut_batch, steps.optimizer_step = cut_batch, optimizer_step
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run in one process and the same in two, each step recorded (RECORD_HOOK; read
    only: a test that changes a run copies it first)."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "hook").mkdir()
    (root / "hook" / "sitecustomize.py").write_text(RECORD_HOOK)
    path = os.pathsep.join([str(root / "hook"), os.environ.get("PYTHONPATH", "")])
    done = {}
    for name, more in (("single", ["--batch-size", "4"]),
                       ("double", ["--batch-size", "2", "--nproc", "2"])):
        (root / f"{name}-steps").mkdir()
        env = dict(os.environ, PYTHONPATH=path, NAPARI_UNET_TEST_RECORD=str(root / f"{name}-steps"))
        done[name] = cli(*COMMON, *VALIDATED, *more, "--out", root / name, "--events", "jsonl",
                         env=env)
        assert done[name].returncode == 0, failure_text(done[name])
    return root, _events(done["single"].stdout), _events(done["double"].stdout)


def _recorded(root, name, rank, step):
    return torch.load(root / f"{name}-steps" / f"rank{rank}-step{step}.pt")


def _initial_weights(checkpoint):
    """The weights a run starts from: the trainer seeds torch with the config's seed."""
    from napari_unet.engine.training.setup import make_model

    torch.manual_seed(checkpoint.config.seed)
    return make_model(checkpoint.config, checkpoint.data_info["in_channels"],
                      checkpoint.data_info["num_classes"]).state_dict()


def _largest(tensors: dict) -> float:
    return max(float(t.float().abs().max()) for t in tensors.values())


# What "two processes with batch 2 train as one with batch 4" can promise (README, "Several
# GPUs"): every step sees the same windows and augmentations bit for bit, and a step from the
# same weights computes the same gradient up to float summation order. Not that the weights
# stay within 1e-5 over several steps: float sums differ in their last bits between two
# processes and one (the gradients are summed in another order), and between any two thread
# counts or CPUs even in one process; training amplifies them: a rounding can flip a ReLU or
# the sign of a near-zero gradient, and RMSprop's and Adam's updates are about as large
# whatever the gradient's size (RMSprop's first moves every weight by lr / 0.3), so such a
# weight then moves the other way. Two single-process runs of this recipe with oneDNN's AVX2
# kernels (ONEDNN_MAX_CPU_ISA=AVX2, as on a CPU without AVX-512), one with 1 thread and one
# with 2, end 5 steps apart by 2.3e-3 where training moved the weights 3.9e-3: what issue
# 32's machine saw between 2 processes and 1 (its Dice 0.0164 against 0.0191, too).
def test_two_processes_see_one_processs_batches_bit_for_bit(runs):
    root, single_events, events = runs
    assert events[0]["world_size"] == 2 and events[0]["global_batch_size"] == 4
    assert single_events[0]["global_batch_size"] == 4
    for step in range(5):
        one = _recorded(root, "single", 0, step)
        ranks = [_recorded(root, "double", rank, step) for rank in (0, 1)]
        assert torch.equal(torch.cat([r["x"] for r in ranks]), one["x"]), step
        assert torch.equal(torch.cat([r["y"] for r in ranks]), one["y"]), step


def test_two_processes_take_one_processs_first_step_up_to_float_rounding(runs):
    root, single_events, double_events = runs
    one, two = _recorded(root, "single", 0, 0), _recorded(root, "double", 0, 0)
    assert _recorded(root, "double", 1, 0)["grad"].keys() == one["grad"].keys()
    # the all-reduced gradient of the two halves is the whole batch's, to float rounding (sums
    # of some 10^4 float32 terms in another order: about 2e-6 of the largest gradient, seen)
    scale = _largest(one["grad"])
    for rank in (0, 1):
        grad = _recorded(root, "double", rank, 0)["grad"]
        diff = _largest({n: grad[n] - one["grad"][n] for n in grad})
        assert diff < 1e-4 * scale, (rank, diff, scale)
    # so are the loss and the weights after the step: RMSprop's first update of a gradient near
    # 0 changes by up to lr / eps = 1e4 times its rounding (were the largest gradient difference
    # seen, 1.6e-9, on such a weight: moved / 20; seen: moved / 600 and less)
    [first_one] = [e["loss"] for e in single_events if e["event"] == "Progress" and e["step"] == 1]
    [first_two] = [e["loss"] for e in double_events if e["event"] == "Progress" and e["step"] == 1]
    assert first_two == pytest.approx(first_one, rel=1e-5)
    initial = _initial_weights(load_checkpoint(root / "single" / "checkpoints" / "last.pt"))
    moved = _largest({n: w - initial[n] for n, w in one["weights"].items()})
    diff = _largest({n: w - one["weights"][n] for n, w in two["weights"].items()})
    assert moved > 1e-4, "the first step did not move the weights: the comparison would be empty"
    assert diff < moved / 10, (diff, moved)


def test_sharded_validation_scores_the_whole_fold(runs):
    root, single_events, double_events = runs
    [two] = [e for e in double_events if e["event"] == "Validation"]
    assert single_events[0]["val_samples"] == double_events[0]["val_samples"] == 2
    # each rank predicted one image; the summed confusion matrices score both: the Dice is that
    # of both images predicted here as each rank did (its threads, its batch, its tiles)
    checkpoint = load_checkpoint(root / "double" / "checkpoints" / "last.pt")
    before = torch.get_num_threads()
    torch.set_num_threads(threads_per_process(2))
    try:
        metrics = evaluate(checkpoint, sample_dataset("dagm"), fold=0, amp="off", device="cpu",
                           tile_size=checkpoint.data_info["input_size"], batch_size=2,
                           overlap=checkpoint.config.val_overlap)
    finally:
        torch.set_num_threads(before)
    assert metrics["samples"] == 2
    assert two["dice"] == pytest.approx(metrics["foreground_dice"], abs=1e-6)
    assert two["dice_per_class"] == pytest.approx(metrics["dice_per_class"], abs=1e-6)


def test_only_rank_zero_writes_events(runs):
    _, _, events = runs
    names = [e["event"] for e in events]
    assert names.count("Started") == 1 and names.count("Finished") == 1
    assert names.count("Validation") == 1 and names.count("Progress") == 5


def test_a_two_process_checkpoint_resumes_in_one_process(runs, tmp_path):
    root, _, _ = runs
    shutil.copytree(root / "double", tmp_path / "double")
    resumed = cli(*COMMON, *VALIDATED, "--batch-size", "4", "--steps", "7", "--resume",
                  "--out", tmp_path / "double", "--events", "jsonl")
    assert resumed.returncode == 0, resumed.stderr
    events = _events(resumed.stdout)
    assert events[0]["start_step"] == 5 and events[0]["world_size"] == 1
    assert [e["step"] for e in events if e["event"] == "Progress"] == [6, 7]
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


def _endless_two_process_run(run, *more, **kw):
    """A context manager: a 2-process run that only a signal ends (its tree killed on exit)."""
    return start_cli(*COMMON, "--steps", "100000", "--batch-size", "2", "--nproc", "2",
                     "--out", run, "--events", "jsonl", *more, stderr=subprocess.PIPE, **kw)


def test_killing_one_rank_ends_the_job(tmp_path):
    run = tmp_path / "killed"
    with _endless_two_process_run(run) as process:
        read_events_until(process, lambda event: event["event"] == "Progress")
        pid = _worker_pid(str(run), 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        code = wait_for_exit(process)
        stderr = process.stderr.read()
    assert code != 0, code  # torchrun noticed (the wait is a ceiling, not a speed)
    # torchrun's summary names the killed rank as the root cause
    assert re.search(r"Root Cause.*?rank\s*:\s*1 \(local_rank: 1\)\s*exitcode\s*:\s*-9",
                     stderr, re.S), stderr[-2000:]


def _cancel_and_read(process, steps):
    """Read the events of a cancelled run to its end; its exit status and stderr."""
    for event in read_events_until(process, None):
        if event["event"] == "Progress":
            steps.append(event["step"])
    code = wait_for_exit(process)
    return code, process.stderr.read()


# SIGTERM: the launcher used to die of it at once, leaving torchrun and its workers training
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cancel_stops_every_rank_after_the_same_step_and_rank_zero_saves(tmp_path, signum):
    run = tmp_path / "cancelled"
    steps = []

    def second_step(event):
        if event["event"] == "Progress":
            steps.append(event["step"])
        return len(steps) == 2

    with _endless_two_process_run(run) as process:
        read_events_until(process, second_step)
        process.send_signal(signum)  # SIGINT: as the Train widget's Cancel does
        code, stderr = _cancel_and_read(process, steps)
    errors = [line for line in stderr.splitlines() if "napari_unet:" in line]
    assert code == 130, (errors, stderr[-2000:])
    # the ranks agreed on a step boundary: rank 0 saved the last step it reported
    assert load_checkpoint(run / "checkpoints" / "last.pt").step == steps[-1]
    assert "cancelled" in stderr


# Inside one rank's step, checkpoint write or validation (the `call`-th call, after the real
# work), SIGINT goes to the CLI that launched torchrun (as the Train widget's Cancel does) and
# the rank waits there until torchrun forwards it: the signal arrives during that moment.
SIGINT_HOOK = """
import os
spec = os.environ.get("NAPARI_UNET_TEST_SIGINT", "").split(":")
if len(spec) == 3 and os.environ.get("RANK") == spec[1]:
    import signal, time
    import psutil
    from napari_unet.engine.training import loop
    name, call = spec[0], int(spec[2])
    real, calls = getattr(loop, name), []

    def hooked(*args, **kwargs):
        calls.append(name)
        result = real(*args, **kwargs)
        if len(calls) == call:
            launcher = psutil.Process(os.getppid()).ppid()  # worker <- torchrun <- CLI
            os.kill(launcher, signal.SIGINT)
            cancel = signal.getsignal(signal.SIGINT).__self__
            while not cancel.requested:
                time.sleep(0.01)
        return result

    setattr(loop, name, hooked)
"""


@pytest.mark.parametrize("name, rank, call, stop_step", [
    ("train_step", 1, 2, 2),  # step 2 of rank 1: both stop after it
    ("save_checkpoint", 0, 1, 3),  # rank 0 writes step 2's checkpoint; rank 1 runs step 3
    ("validate", 1, 1, 4)],  # step 3's validation on rank 1; rank 0 runs step 4
    ids=["during a step", "during a checkpoint write", "during a validation"])
def test_a_sigint_at_any_moment_stops_both_ranks_after_one_step(tmp_path, name, rank, call,
                                                                 stop_step):
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(SIGINT_HOOK)
    env = dict(os.environ, NAPARI_UNET_TEST_SIGINT=f"{name}:{rank}:{call}",
               PYTHONPATH=os.pathsep.join([str(tmp_path / "hook"),
                                           os.environ.get("PYTHONPATH", "")]))
    run, steps = tmp_path / "run", []
    with _endless_two_process_run(run, *VALIDATED[:2], "--val-every", "3",
                                  "--checkpoint-every", "2", env=env) as process:
        code, stderr = _cancel_and_read(process, steps)
    assert code == 130, stderr[-2000:]
    assert steps[-1] == stop_step, steps
    assert load_checkpoint(run / "checkpoints" / "last.pt", prefer="last.pt").step == stop_step
    assert stderr.count("cancelled") >= 2, stderr[-2000:]  # both ranks, neither killed
