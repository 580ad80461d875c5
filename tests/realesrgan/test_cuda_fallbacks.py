"""The engine's CUDA-only control flow, driven on the CPU: fp16 NaN/black -> fp32 redo; out of memory -> smaller batch ->
smaller tile -> a clear failure.

CI has no GPU, so these tests run the real ``Engine`` (its worker thread, ``_next_batch``, ``_process``, ``_forward``,
``_on_oom``, ``Job.split``/``deliver``/``finish``) and swap only the networks, through the attributes the engine itself reads
to choose its path: ``Engine.half`` with ``LoadedModel.fp16`` (``_forward`` runs fp16 when both are set; on CUDA
``Engine.__init__`` sets them) and ``LoadedModel.fp32``. ``torch.cuda.OutOfMemoryError`` exists in every torch build and
``torch.cuda.empty_cache()`` does nothing without CUDA, so the package needs no change and no test-only branch.

The stand-in networks run the real seeded animevideov3 one sample at a time, so that their output does not depend on how the
worker batched the tiles (on the CPU a batch changes fp32 rounding): any difference from the plain run would then be a bug
in the control flow, and the images are compared byte for byte. Every stand-in refuses to be called more than CALL_CAP
times, so a retry loop that never ends fails the test (the worker turns the error into JobFailed) instead of hanging it.
"""
import numpy as np
import pytest
import torch
from conftest import Engine, Settings, models_dir, psnr, smooth_image

from kbxy_upscale.engine import MIN_TILE, Job, JobFailed

ARCH = "animevideov3"  # the lightest of the five (16 convolutions), x4, mod 1
CALL_CAP = 60
TIMEOUT = 180


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """A shared, loaded machine: one intra-op thread here, the previous count restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_engine(tmp_path_factory, model_store):
    """``make_engine(max_batch) -> Engine`` on the CPU with animevideov3 only, not started; all stopped at teardown."""
    directory = models_dir(tmp_path_factory, model_store, [ARCH])
    made = []

    def make(max_batch=1):
        settings = Settings(models_dir=directory, device="cpu", tile=0, max_batch=max_batch,
                            jobs_dir=str(tmp_path_factory.mktemp("jobs")))
        eng = Engine(settings)
        made.append(eng)
        return eng

    yield make
    for eng in made:
        eng.stop()


def run_jobs(eng, jobs):
    """Submit ``jobs`` before the worker starts (so that it batches them as a GPU would), then wait for them."""
    for job in jobs:
        eng.submit(job)
    eng.start()
    outputs = []
    for job in jobs:
        job.future.result(timeout=TIMEOUT)
        outputs.append(job.finish())
    return outputs


def plain_fp32(make_engine, image, tile):
    """The reference of these tests: the unmodified CPU engine (fp32, batches of 1, the real network)."""
    eng = make_engine(max_batch=1)
    eng.start()
    return eng.upscale(image, ARCH, tile=tile, timeout=TIMEOUT)


def tile_index(sample, tiles):
    """Which of ``tiles`` has ``sample`` (3, h, w) as its input (the test images make every tile different)."""
    found = [i for i, tile in enumerate(tiles) if tile.input().shape[1:] == sample.shape and torch.equal(tile.input()[0], sample)]
    assert len(found) == 1, f"sample matches tiles {found}"
    return found[0]


class Fp32Net(torch.nn.Module):
    """Stands in for ``LoadedModel.fp32``: the real network run per sample, recording every call.

    Like a GPU out of memory, it raises ``torch.cuda.OutOfMemoryError`` for a batch larger than ``max_batch``, a tile with a
    side larger than ``max_side``, or the calls numbered (from 1) in ``oom_calls``. ``shapes``: the input shape of every
    call; ``samples``: the inputs it actually computed.
    """

    def __init__(self, net, max_batch=None, max_side=None, oom_calls=()):
        super().__init__()
        self.net = net
        self.max_batch, self.max_side, self.oom_calls = max_batch, max_side, set(oom_calls)
        self.shapes = []
        self.samples = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        if len(self.shapes) > CALL_CAP:
            raise AssertionError(f"{CALL_CAP} calls: the engine keeps retrying")
        if ((self.max_batch is not None and x.shape[0] > self.max_batch) or (self.max_side is not None and max(x.shape[2:]) > self.max_side)
                or len(self.shapes) in self.oom_calls):
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (raised by the test for {tuple(x.shape)})")
        self.samples.extend(sample.clone() for sample in x)
        return torch.cat([self.net(sample[None]) for sample in x])


class Fp16Net(torch.nn.Module):
    """Stands in for ``LoadedModel.fp16``: a perfect fp16 network, except on the inputs it is told to break.

    ``cases``: (fp32 input (1, 3, h, w), fault) with fault None, "nan" or "black". It finds each fp16 sample it is given
    among the cases and returns the real fp32 output of that case's input (so a tile it gets right is exactly what fp32
    gives, and the final image can be compared with the plain fp32 run byte for byte), or NaN, or zeros.
    ``calls``: (batch size, dtype) of every call.
    """

    def __init__(self, net, cases):
        super().__init__()
        with torch.inference_mode():
            self.cases = [(x.half(), fault, net(x)) for x, fault in cases]
        self.calls = []

    def forward(self, x):
        self.calls.append((x.shape[0], x.dtype))
        if len(self.calls) > CALL_CAP:
            raise AssertionError(f"{CALL_CAP} calls: the engine keeps retrying")
        outputs = []
        for sample in x.split(1):
            found = [(fault, out) for key, fault, out in self.cases if key.shape == sample.shape and torch.equal(key, sample)]
            assert len(found) == 1, f"an fp16 input that matches {len(found)} cases"
            fault, out = found[0]
            outputs.append(torch.full_like(out, float("nan")) if fault == "nan" else torch.zeros_like(out) if fault == "black" else out)
        return torch.cat(outputs)


@pytest.mark.parametrize("fault", ["nan", "black"])
def test_fp16_bad_tiles_are_redone_in_fp32_and_only_those(make_engine, fault):
    """9 tiles in batches of 4, 4 and 1, fp16 breaking tiles 1 and 2 (first batch) and 6 (second batch): exactly those
    three are recomputed in fp32, once each, as sub-batches of 2 and 1; the third batch never reaches fp32; the image
    equals the plain fp32 run byte for byte (so each redone tile landed where it belongs)."""
    image = smooth_image(21, 40, 56)
    eng = make_engine(max_batch=4)
    model = eng.models[ARCH]
    job = Job(image, model, None, 32)
    tiles = job.planes[0].tiles
    assert len(tiles) == 9 and {(t.h, t.w) for t in tiles} == {(32, 32)}
    bad = [1, 2, 6]
    fp32 = Fp32Net(model.fp32)
    fp16 = Fp16Net(model.fp32, [(t.input(), fault if i in bad else None) for i, t in enumerate(tiles)])
    model.fp32, model.fp16, eng.half = fp32, fp16, True
    (out,) = run_jobs(eng, [job])
    assert fp16.calls == [(4, torch.float16), (4, torch.float16), (1, torch.float16)]
    assert [tile_index(s, tiles) for s in fp32.samples] == bad
    assert fp32.shapes == [(2, 3, 32, 32), (1, 3, 32, 32)]
    assert eng.stats["fp16_fallbacks"] == 3
    expected = plain_fp32(make_engine, image, 32)
    assert expected.std() > 10, "the plain run must not be flat"
    assert np.array_equal(out, expected), f"max diff {np.abs(out.astype(int) - expected).max()}"


@pytest.mark.parametrize("fault", ["nan", "black"])
def test_fp16_bad_image_in_a_batch_is_redone_alone(make_engine, fault):
    """Two untiled requests of one shape in one fp16 batch, the second one broken: only it is recomputed in fp32; both
    results equal their plain fp32 runs byte for byte (the redo went to the right request)."""
    images = [smooth_image(31, 20, 24), smooth_image(32, 20, 24)]
    eng = make_engine(max_batch=4)
    model = eng.models[ARCH]
    jobs = [Job(img, model, None, 0) for img in images]
    inputs = [job.planes[0].tiles[0].input() for job in jobs]
    fp32 = Fp32Net(model.fp32)
    fp16 = Fp16Net(model.fp32, [(inputs[0], None), (inputs[1], fault)])
    model.fp32, model.fp16, eng.half = fp32, fp16, True
    outputs = run_jobs(eng, jobs)
    assert fp16.calls == [(2, torch.float16)]
    assert len(fp32.samples) == 1 and torch.equal(fp32.samples[0], inputs[1][0])
    assert eng.stats["fp16_fallbacks"] == 1
    for img, out in zip(images, outputs):
        assert np.array_equal(out, plain_fp32(make_engine, img, 0))


def test_fp16_black_output_of_a_dark_input_is_kept(make_engine):
    """A (nearly) black input whose fp16 output is black is right, not a failure: no fp32 redo, the black output is kept."""
    image = np.random.default_rng(41).integers(0, 4, (16, 18, 3), dtype=np.uint8)  # levels 0..3: below the 4/255 guard
    eng = make_engine(max_batch=4)
    model = eng.models[ARCH]
    job = Job(image, model, None, 0)
    fp32 = Fp32Net(model.fp32)
    fp16 = Fp16Net(model.fp32, [(job.planes[0].tiles[0].input(), "black")])
    model.fp32, model.fp16, eng.half = fp32, fp16, True
    (out,) = run_jobs(eng, [job])
    assert fp16.calls == [(1, torch.float16)]
    assert not fp32.shapes and eng.stats["fp16_fallbacks"] == 0
    assert out.shape == (64, 72, 3) and not out.any()


def test_oom_halves_the_batch_until_it_fits(make_engine):
    """A network out of memory above 2 tiles a batch: 8 -> 4 -> 2, then the rest in batches of 2 (and a last 1); the tile
    size is not touched while the batch can still shrink; the image equals the run without the limit byte for byte."""
    image = smooth_image(22, 40, 56)
    free = make_engine(max_batch=8)
    free.models[ARCH].fp32 = unconstrained = Fp32Net(free.models[ARCH].fp32)
    (expected,) = run_jobs(free, [Job(image, free.models[ARCH], None, 32)])
    assert [shape[0] for shape in unconstrained.shapes] == [8, 1]

    eng = make_engine(max_batch=8)
    model = eng.models[ARCH]
    model.fp32 = fp32 = Fp32Net(model.fp32, max_batch=2)
    job = Job(image, model, None, 32)
    (out,) = run_jobs(eng, [job])
    assert [shape[0] for shape in fp32.shapes] == [8, 4, 2, 2, 2, 2, 1]
    assert {shape[2:] for shape in fp32.shapes} == {(32, 32)} and job.tile == 32
    assert eng.stats["cuda_oom"] == 2 and eng.max_batch == 2
    assert expected.std() > 10
    assert np.array_equal(out, expected), f"max diff {np.abs(out.astype(int) - expected).max()}"


def test_oom_halves_the_tile_until_it_fits(make_engine):
    """A batch of 1 out of memory above 40 px a side: the untiled 32x128 (padded) request is retried at tile 64, then 32,
    where it fits; the image equals a run that asked for tile 32 byte for byte (nothing left over from the failed
    attempts) and stays within the seam tolerance of the untiled run (<= 2 LSB, PSNR >= 45 dB, as test_equivalence)."""
    image = smooth_image(23, 22, 118)  # + pre-pad 10: 32x128
    eng = make_engine(max_batch=1)
    model = eng.models[ARCH]
    model.fp32 = fp32 = Fp32Net(model.fp32, max_side=40)
    eng.start()
    out = eng.upscale(image, ARCH, tile=0, timeout=TIMEOUT)
    tiles_at_32 = len(Job(image, model, None, 32).planes[0].tiles)
    assert fp32.shapes == [(1, 3, 32, 128), (1, 3, 32, 64)] + [(1, 3, 32, 32)] * tiles_at_32
    assert eng.stats["cuda_oom"] == 2
    assert np.array_equal(out, plain_fp32(make_engine, image, 32))
    untiled = plain_fp32(make_engine, image, 0)
    diff = np.abs(out.astype(int) - untiled)
    assert diff.max() <= 2, f"max diff {diff.max()}"
    assert psnr(out, untiled) >= 45


def test_oom_midway_restarts_the_request_from_clean_accumulators(make_engine):
    """Out of memory on the third of three 32x64 tiles, after two were already blended into the output: the request is
    split again at 32 and its result equals a run that asked for tile 32 byte for byte (the old partial sum is dropped)."""
    image = smooth_image(24, 22, 118)
    eng = make_engine(max_batch=1)
    model = eng.models[ARCH]
    model.fp32 = fp32 = Fp32Net(model.fp32, oom_calls={3})
    eng.start()
    out = eng.upscale(image, ARCH, tile=64, timeout=TIMEOUT)
    assert fp32.shapes[:3] == [(1, 3, 32, 64)] * 3 and set(fp32.shapes[3:]) == {(1, 3, 32, 32)}
    assert eng.stats["cuda_oom"] == 1
    assert np.array_equal(out, plain_fp32(make_engine, image, 32))


def test_oom_everywhere_fails_clearly_below_min_tile(make_engine):
    """A network always out of memory: batch 2 -> 1, then tile 64 -> 32 (= MIN_TILE, still tried) -> 16 (< MIN_TILE):
    the request fails with the package's message after exactly those 3 calls, not a loop; the worker lives on."""
    assert MIN_TILE == 32  # the sizes below are chosen around it
    image = smooth_image(25, 40, 56)  # + pre-pad 10: 50x66 -> at tile 64, two 50x64 tiles
    eng = make_engine(max_batch=4)
    model = eng.models[ARCH]
    real = model.fp32
    model.fp32 = fp32 = Fp32Net(real, max_side=0)
    eng.start()
    with pytest.raises(JobFailed, match=r"^out of GPU memory even at the smallest tile size$"):
        eng.upscale(image, ARCH, tile=64, timeout=TIMEOUT)
    assert fp32.shapes == [(2, 3, 50, 64), (1, 3, 50, 64), (1, 3, 32, 32)]
    assert eng.stats["cuda_oom"] == 3 and eng.stats["errors_worker"] == 0 and eng.queue_depth() == 0
    model.fp32 = real  # memory is back: the same worker serves the next request
    assert eng.upscale(image, ARCH, tile=32, timeout=TIMEOUT).shape == (160, 224, 3)
