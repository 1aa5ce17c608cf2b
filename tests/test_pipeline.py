"""The training input pipeline: host windows in their stored dtype, the background thread
(errors, cancel), device-side normalisation, lagged loss reads, thread counts and DDP options."""
import threading
import time

import numpy as np
import pytest
import torch
from test_reliability import _loss_nan_at  # the same NaN-injecting loss

from napari_unet import cli
from napari_unet.engine import (
    Progress,
    load_checkpoint,
    preset_config,
    sample_dataset,
    train,
)
from napari_unet.engine.data.normalization import NormStats, normalize, normalize_tensor
from napari_unet.engine.data.patches import PatchSampler
from napari_unet.engine.training import distributed, pipeline
from napari_unet.engine.training import loop as trainer_module
from napari_unet.errors import ConfigError, DataError, TrainingDiverged

NONE = NormStats("none", [], [], [], [])


def tiny(**overrides):
    values = dict(steps=6, batch_size=2, patch_size=[32, 32], lr=2e-3, amp="off",
                  model_options={"base_channels": 4}, val_every=1000, checkpoint_every=1000,
                  log_every=5, fold=None, device="cpu")
    values.update(overrides)
    return preset_config("industrial", **values)


@pytest.fixture(scope="module")
def dagm():
    return sample_dataset("dagm", n=4, size=32, seed=2)


def batch_threads():
    return [t for t in threading.enumerate() if t.name == pipeline.THREAD_NAME]


# -- host side ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, travels", [(np.uint8, torch.uint8), (np.int16, torch.int16),
                                            (np.uint16, torch.uint16),
                                            (np.float64, torch.float32)])
def test_windows_travel_in_their_stored_dtype_and_normalise_like_the_host(dtype, travels):
    rng = np.random.default_rng(0)
    images = [(rng.random((2, 40, 30)) * 3000).astype(dtype) for _ in range(3)]
    masks = [rng.integers(0, 3, (40, 30)).astype(np.uint8) for _ in range(3)]
    stats = NormStats("zscore", [], [], [100.0, 7.0], [900.0, 3.0])
    sampler = PatchSampler(images, masks, (36, 36), (20, 20), 3, stats, seed=4)
    x, y = pipeline.cut_batch(sampler, 7)
    assert x.dtype == travels and y.dtype == torch.uint8 and x.shape == (3, 2, 36, 36)
    expected_x, expected_y = sampler.batch(7)  # the host path: float32 normalised, int64
    assert torch.equal(normalize_tensor(x, stats), expected_x)
    assert torch.equal(y.long(), expected_y)


def test_a_reused_batch_is_filled_like_a_new_one(dagm):
    sampler = PatchSampler(dagm.images, dagm.masks, (32, 32), (32, 32), 2, NONE, seed=1)
    old = pipeline.cut_batch(sampler, 0)
    reused = pipeline.cut_batch(sampler, 5, out=old)
    fresh = pipeline.cut_batch(sampler, 5)
    assert reused[0].data_ptr() == old[0].data_ptr()
    assert torch.equal(reused[0], fresh[0]) and torch.equal(reused[1], fresh[1])


def test_normalize_tensor_is_normalize_bit_for_bit():
    image = np.random.default_rng(1).normal(size=(2, 9, 7)).astype(np.float32) * 50
    image[0, 0, 0], image[1, 1, 1] = np.nan, np.inf
    stats = NormStats("minus_one_one", [-20.0, -10.0], [30.0, 40.0], [], [])
    on_tensor = normalize_tensor(torch.from_numpy(image.copy())[None], stats)[0]
    assert np.array_equal(on_tensor.numpy(), normalize(image, stats))
    assert on_tensor.abs().max() <= 1.5 and on_tensor[0, 0, 0] == 0


# -- the background thread -----------------------------------------------------------------------
class FailingSampler(PatchSampler):
    def read_window(self, index, start, image_out=None, mask_out=None):
        if self.failing_step is not None and self.current == self.failing_step:
            raise DataError("sample 3 cannot be read: check the file")
        return super().read_window(index, start, image_out, mask_out)

    def plan(self, step):
        self.current = step
        return super().plan(step)


def test_an_error_while_cutting_reaches_the_consumer_unchanged(dagm):
    sampler = FailingSampler(dagm.images, dagm.masks, (32, 32), (32, 32), 2, NONE)
    sampler.failing_step = 2
    with pipeline.HostBatches(sampler, range(5)) as batches:
        assert [batches.get()[0] for _ in range(2)] == [0, 1]
        with pytest.raises(DataError, match="sample 3 cannot be read"):
            batches.get()
    assert not batch_threads()


def test_an_error_while_preparing_a_batch_stops_training_with_its_message(dagm, tmp_path,
                                                                          monkeypatch):
    real = PatchSampler.read_window

    def broken(self, index, start, image_out=None, mask_out=None):
        if getattr(self, "calls", 0) >= 6:  # the fourth batch of two
            raise DataError("sample 3 cannot be read: check the file")
        self.calls = getattr(self, "calls", 0) + 1
        return real(self, index, start, image_out, mask_out)

    monkeypatch.setattr(PatchSampler, "read_window", broken)
    steps = []
    with pytest.raises(DataError, match="sample 3 cannot be read"):
        for event in train(tiny(), dagm, run_dir=tmp_path / "r"):
            if isinstance(event, Progress):
                steps.append(event.step)
    assert steps == [1, 2, 3]
    assert not batch_threads()


def memory_mapped(dataset, folder):
    """`dataset` with its images memory-mapped from .npy files in `folder`."""
    from napari_unet.engine.data.dataset import Dataset

    images = []
    for i, image in enumerate(dataset.images):
        np.save(folder / f"image{i}.npy", image)
        images.append(np.load(folder / f"image{i}.npy", mmap_mode="r"))
    return Dataset(images, dataset.masks, dataset.names, dataset.spatial_dims)


def test_a_cpu_cuts_in_memory_windows_in_the_step_and_read_ones_ahead(dagm, tmp_path):
    # issue 35: the thread's hand-over of the GIL cost a small CPU step more than cutting
    cpu = torch.device("cpu")
    in_memory = PatchSampler(dagm.images, dagm.masks, (32, 32), (32, 32), 2, NONE, seed=3)
    mapped = memory_mapped(dagm, tmp_path)
    from_disk = PatchSampler(mapped.images, mapped.masks, (32, 32), (32, 32), 2, NONE, seed=3)
    assert not pipeline.cut_ahead(in_memory, cpu) and pipeline.cut_ahead(from_disk, cpu)
    assert pipeline.cut_ahead(in_memory, torch.device("cuda", 0))
    with pipeline.DeviceBatches(in_memory, range(3), cpu) as inline, \
            pipeline.DeviceBatches(from_disk, range(3), cpu) as ahead:
        assert isinstance(inline.host, pipeline.InlineBatches)
        assert isinstance(ahead.host, pipeline.HostBatches) and batch_threads()
        for step in range(3):
            (a, xa, ya), (b, xb, yb) = inline.next(), ahead.next()
            assert a == b == step and torch.equal(xa, xb) and torch.equal(ya, yb)
        with pytest.raises(StopIteration):
            inline.next()
    assert not batch_threads()


def test_cancel_while_the_next_batch_is_being_cut_leaves_no_thread(dagm, tmp_path, monkeypatch):
    real = PatchSampler.read_window

    def slow(self, *args):
        time.sleep(0.05)
        return real(self, *args)

    monkeypatch.setattr(PatchSampler, "read_window", slow)
    # images read from disk: a CPU run cuts ahead in the thread (in-memory ones need none)
    events = train(tiny(steps=1000), memory_mapped(dagm, tmp_path), run_dir=tmp_path / "r")
    for event in events:
        if isinstance(event, Progress) and event.step == 2:
            assert batch_threads()  # cutting ahead
            break
    events.close()
    assert not batch_threads()
    assert load_checkpoint(tmp_path / "r").step == 2


# -- losses stay on the device --------------------------------------------------------------------
def lagged(monkeypatch, every):
    monkeypatch.setattr(trainer_module, "loss_read_interval", lambda device, config: every)


def test_reading_losses_every_few_steps_changes_nothing_but_when_they_are_read(
        dagm, tmp_path, monkeypatch):
    every_step = list(train(tiny(steps=10), dagm, run_dir=tmp_path / "a"))
    lagged(monkeypatch, 5)
    every_five = list(train(tiny(steps=10), dagm, run_dir=tmp_path / "b"))
    exact = {e.step: e.loss for e in every_step if isinstance(e, Progress)}
    shown = {e.step: e.loss for e in every_five if isinstance(e, Progress)}
    # read at the first step, every 5 and the last; in between the last read value is shown
    assert [shown[s] for s in (1, 5, 10)] == [exact[s] for s in (1, 5, 10)]
    assert shown[2] == shown[4] == exact[1] and shown[7] == exact[5]
    a = load_checkpoint(tmp_path / "a").model.state_dict()
    b = load_checkpoint(tmp_path / "b").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_lagged_nan_is_caught_at_the_next_read_and_the_last_good_checkpoint_kept(
        dagm, tmp_path, monkeypatch):
    lagged(monkeypatch, 5)
    monkeypatch.setattr(trainer_module, "build_loss", _loss_nan_at(6))
    progress = []
    with pytest.raises(TrainingDiverged, match="at step 6: lower --lr"):
        for event in train(tiny(steps=20, checkpoint_every=4), dagm, run_dir=tmp_path / "r"):
            if isinstance(event, Progress):
                progress.append(event.step)
    # read before the checkpoint of step 8: the NaN of step 6 stops the run there, unsaved
    assert progress == list(range(1, 8)) and load_checkpoint(tmp_path / "r").step == 4


def test_cancel_with_an_unread_nan_keeps_the_last_good_checkpoint(dagm, tmp_path, monkeypatch):
    lagged(monkeypatch, 100)
    monkeypatch.setattr(trainer_module, "build_loss", _loss_nan_at(3))
    events = train(tiny(steps=50, checkpoint_every=2), dagm, run_dir=tmp_path / "r")
    for event in events:
        if isinstance(event, Progress) and event.step == 3:
            break
    events.close()
    assert load_checkpoint(tmp_path / "r").step == 2


# -- DDP: each rank's share of one process's batch, whatever the timing --------------------------
EVERY_AUGMENTATION = dict(hflip=0.5, vflip=0.5, rot90=[0, 1, 2, 3], crop_resize=[0.8, 1.0],
                          brightness=0.2, contrast=0.2, elastic=0.5, gamma=0.3,
                          low_resolution=0.3, foreground_oversample=0.3,
                          normalization="minus_one_one")


def stepped_batches(dataset, config, rank, world_size, threads, lag):
    """What each real training step (`steps.train_step`: the batch thread's windows, the
    step's normalisation and augmentation) of `rank` hands the optimizer, with torch at
    `threads` threads and `lag(step, where)` seconds of sleep in the batch thread ("cut") or
    in the training thread ("step"), to move their timing against each other."""
    from napari_unet.engine.data.normalization import compute_norm_stats
    from napari_unet.engine.training import steps as steps_module
    from napari_unet.engine.training.setup import make_augmenter

    real_cut, seen = pipeline.cut_batch, []

    def cut(sampler, step, *args, **kwargs):
        time.sleep(lag(step, "cut"))
        return real_cut(sampler, step, *args, **kwargs)

    def optimizer_step(net, model, x, y, *args):
        seen.append((x.clone(), y.clone()))
        time.sleep(lag(len(seen), "step"))
        return torch.zeros(())

    norm = compute_norm_stats(dataset.images, config.normalization)
    size = tuple(config.patch_size)
    sampler = PatchSampler(dataset.images, dataset.masks, size, size, config.batch_size, norm,
                           seed=config.seed, foreground_oversample=config.foreground_oversample,
                           rank=rank, world_size=world_size)
    dist = distributed.DistributedContext(rank=rank, world_size=world_size)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(pipeline, "cut_batch", cut)
            patch.setattr(steps_module, "optimizer_step", optimizer_step)
            with pipeline.DeviceBatches(sampler, range(config.steps), torch.device("cpu")) as b:
                for step in range(config.steps):
                    steps_module.train_step(torch.nn.Identity(), None, b, make_augmenter(config),
                                            None, None, None, norm, config, torch.device("cpu"),
                                            torch.contiguous_format, step, dist)
                    b.start_next()
    finally:
        torch.set_num_threads(before)
    return seen


def test_the_ranks_steps_see_one_processs_batch_bit_for_bit_whatever_the_timing(dagm):
    """The data half of "N processes with batch B train as one with N x B" holds exactly, on any
    machine: what can differ is only float summation in the network (tests/test_distributed.py).
    The batch thread runs ahead or lags the training thread differently in each process, and
    each rank has half the threads, as under `--nproc 2`."""
    config = tiny(batch_size=4, **EVERY_AUGMENTATION)
    one = stepped_batches(dagm, config, 0, 1, threads=2, lag=lambda step, where: 0.0)

    def lag(rank):  # rank 0's batch thread sleeps at even steps, its training thread at odd ones
        return lambda step, where: 0.02 * ((step + rank) % 2 == (where == "cut"))

    half = tiny(batch_size=2, **EVERY_AUGMENTATION)
    ranks = [stepped_batches(dagm, half, rank, 2, threads=1, lag=lag(rank)) for rank in (0, 1)]
    assert len(one) == config.steps
    for step, (x, y) in enumerate(one):
        assert torch.equal(torch.cat([r[step][0] for r in ranks]), x), step
        assert torch.equal(torch.cat([r[step][1] for r in ranks]), y), step


# -- processes, threads, DDP options ----------------------------------------------------------------
def test_threads_per_process_share_the_cores(monkeypatch):
    assert distributed.threads_per_process(2, cores=8) == 4
    assert distributed.threads_per_process(3, cores=2) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the budget a parent (the GUI) gave
    assert distributed.threads_per_process(2) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(distributed.os, "cpu_count", lambda: 16)
    assert distributed.threads_per_process(4) == 4


def launched_env(monkeypatch, argv, omp=None):
    seen = {}

    class Popen:
        def __init__(self, command, env=None):
            seen["command"], seen["env"] = command, env

        def wait(self):
            return 0

    monkeypatch.setattr(cli.subprocess, "Popen", Popen)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert cli.main(argv) == 0
    return seen


def test_the_launcher_gives_each_worker_its_share_of_the_cores(monkeypatch, tmp_path):
    argv = ["train", "--preset", "industrial", "--sample", "dagm", "--device", "cpu",
            "--nproc", "2", "--out", str(tmp_path / "r")]
    monkeypatch.setattr(distributed.os, "cpu_count", lambda: 8)
    assert launched_env(monkeypatch, argv)["env"]["OMP_NUM_THREADS"] == "4"
    # the Train widget's child keeps the GUI a core: OMP_NUM_THREADS=7 -> 3 per worker
    seen = launched_env(monkeypatch, argv + ["--ddp-timeout", "2.5"], omp="7")
    assert seen["env"]["OMP_NUM_THREADS"] == "3"
    assert seen["env"][distributed.TIMEOUT_VARIABLE] == "2.5"
    assert "--nproc" not in seen["command"]


def test_more_processes_than_gpus_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code = cli.main(["train", "--preset", "industrial", "--sample", "dagm", "--nproc", "4",
                     "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--nproc 4" in err[0] and "2 GPU(s)" in err[0]
    with pytest.raises(ConfigError):
        distributed.check_process_count(3, "cuda")
    distributed.check_process_count(4, "cpu")  # gloo processes: no GPU limit


def test_the_collective_timeout_is_given_in_minutes(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_VARIABLE, raising=False)
    assert distributed.collective_timeout().total_seconds() == 600
    monkeypatch.setenv(distributed.TIMEOUT_VARIABLE, "2.5")
    assert distributed.collective_timeout().total_seconds() == 150
    for bad in ("0", "-1", "ten"):
        monkeypatch.setenv(distributed.TIMEOUT_VARIABLE, bad)
        with pytest.raises(ConfigError, match="minutes"):
            distributed.collective_timeout()


def test_a_first_sigint_under_ddp_is_noted_and_a_second_interrupts():
    stop = distributed.CancelRequest(agreed=True)
    stop.install()
    try:
        import signal
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        stop.restore()


# -- CUDA (skipped without a GPU) ---------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_device_batches_arrive_pinned_and_equal_to_the_host_cut(dagm):
    sampler = PatchSampler(dagm.images, dagm.masks, (32, 32), (32, 32), 2, NONE, seed=3)
    device = torch.device("cuda", 0)
    with pipeline.DeviceBatches(sampler, range(4), device) as batches:
        for step in range(4):
            got, x, y = batches.next()
            batches.start_next()
            expected = pipeline.cut_batch(sampler, step)
            assert got == step and x.device == device
            assert torch.equal(x.cpu(), expected[0]) and torch.equal(y.cpu(), expected[1])
    assert not batch_threads()


@cuda
def test_normalising_and_augmenting_on_the_gpu_matches_the_cpu(dagm):
    from napari_unet.engine.training.augment import Augmenter
    sampler = PatchSampler(dagm.images, dagm.masks, (32, 32), (32, 32), 4, NONE, seed=3)
    x, y = pipeline.cut_batch(sampler, 1)
    stats = NormStats("minus_one_one", [0.0], [255.0], [], [])
    augment = Augmenter(2, hflip=0.5, vflip=0.5, rot90=(0, 1, 2, 3), brightness=0.2)
    results = [pipeline.prepare(x.to(device), y.to(device), stats, augment,
                                torch.Generator().manual_seed(5), 0, 4, torch.channels_last)
               for device in ("cpu", "cuda")]
    torch.testing.assert_close(results[1][0].cpu(), results[0][0], atol=1e-6, rtol=0)
    assert torch.equal(results[1][1].cpu(), results[0][1])


# -- make gpu-check ------------------------------------------------------------------------------
def gpu_check():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a GPU-less machine")
def test_gpu_check_without_a_gpu_says_so_in_one_line(capsys, tmp_path):
    assert gpu_check().main(["--out", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0] and not (tmp_path / "r.md").exists()


def test_gpu_check_report_lists_every_step_and_skips_ddp_on_one_gpu():
    module = gpu_check()
    assert "tests/test_pipeline.py" in module.cuda_test_files()
    steps = module.ddp_steps(1, quick=True)
    assert steps[0]["status"] == "skipped"
    text = module.report({"gpu": "H100"}, steps + [
        {"title": "CUDA tests", "command": "pytest", "status": 0, "seconds": 3.0,
         "output": "2 passed"}])
    assert "| gpu | H100 |" in text and "| CUDA tests | passed | 3 |" in text
    assert "| 2-process NCCL run with a resume | skipped | 0 |" in text


# -- a small step's overhead (issue 35) ------------------------------------------------------------
def test_a_step_formats_no_stack_trace_and_seeds_like_torch_manual_seed(dagm, tmp_path,
                                                                       monkeypatch):
    # torch.manual_seed queues the seed of every accelerator torch has but did not start (CUDA
    # on a CPU, XPU, MTIA) with traceback.format_stack(): three stack traces every step
    import traceback

    from napari_unet.engine.training.steps import seed_step

    formatted, real = [], traceback.format_stack
    monkeypatch.setattr(traceback, "format_stack", lambda *a, **k: formatted.append(1) or
                        real(*a, **k))
    for event in train(tiny(steps=8), dagm, run_dir=tmp_path / "r"):
        if isinstance(event, Progress) and event.step == 3:
            formatted.clear()
        if isinstance(event, Progress) and event.step == 7:
            assert formatted == [], "a training step formatted stack traces"
    seed_step(torch.device("cpu"), 1234)
    ours = torch.rand(4)
    torch.manual_seed(1234)
    assert torch.equal(ours, torch.rand(4))  # dropout draws what it drew before


@pytest.mark.parametrize("optimizer, kernel", [("adam", "fused"), ("adamw", "fused"),
                                               ("sgd", "fused"), ("rmsprop", "foreach")])
def test_the_optimizer_updates_all_parameters_in_one_kernel_where_torch_has_one(optimizer,
                                                                                kernel):
    from napari_unet.engine.training.setup import make_optimizer

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    made = make_optimizer(tiny(optimizer=optimizer), model.parameters())
    assert made.defaults[kernel] is True
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    made.step()  # and it steps on a CPU


def test_integer_windows_skip_the_finite_check_only_where_nothing_can_be_infinite():
    x = torch.tensor([[[[0, 7, 255]]]], dtype=torch.uint8)
    flat = NormStats("minus_one_one", [7.0], [7.0], [], [])  # a constant image's range
    assert torch.isfinite(normalize_tensor(x, flat)).all()
    still = NormStats("zscore", [], [], [7.0], [0.0])
    assert torch.isfinite(normalize_tensor(x, still)).all()
    usual = NormStats("minus_one_one", [0.0], [255.0], [], [])
    image = np.array([[[0, 7, 255]]], np.uint8)
    assert np.array_equal(normalize_tensor(x, usual)[0].numpy(), normalize(image, usual))


def test_the_statistics_reach_the_device_once():
    # issue 35: every step made the statistics' tensors anew and copied them to the device
    from napari_unet.engine.data import normalization

    stats = NormStats("zscore", [], [], [3.0], [2.0])
    x = torch.ones(2, 1, 4, 4, dtype=torch.uint8)
    first = normalize_tensor(x, stats)
    made = normalization._stats_on.cache_info().misses
    again = normalize_tensor(x, stats)
    assert normalization._stats_on.cache_info().misses == made and torch.equal(first, again)
    assert torch.equal(first, torch.full_like(first, -1.0))
