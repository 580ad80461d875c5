"""Our pipeline against realesrgan.RealESRGANer on the same weights and the same arrays."""
import numpy as np
import pytest
import torch
from conftest import ALL_ARCHES, Engine, Settings, models_dir, psnr, smooth_image

from kbxy_upscale.engine import Job


def assert_not_degenerate(output):
    """Guard against comparing two black (or saturated) images: the models must do work."""
    values = output.astype(np.float64) / (65535 if output.dtype == np.uint16 else 255)
    assert values.std() > 0.05, f"output nearly constant (std {values.std():.4f})"
    clipped = np.mean((values == 0) | (values == 1))
    assert clipped < 0.3, f"{clipped:.0%} of the output is clipped"


@pytest.mark.parametrize("arch", ALL_ARCHES)
def test_fp32_rgb_identical_to_reference(engine, reference, arch):
    image = smooth_image(1, 29, 34)  # odd sizes: exercises the mod-pad of x2plus
    ours = engine.upscale(image, arch)
    theirs, mode = reference(arch).enhance(image)
    assert mode == "RGB"
    scale = engine.models[arch].scale
    assert ours.shape == theirs.shape == (29 * scale, 34 * scale, 3)
    assert_not_degenerate(ours)
    assert np.array_equal(ours, theirs), f"max diff {np.abs(ours.astype(int) - theirs).max()}"


@pytest.mark.parametrize("arch", ["general-x4v3", "anime_6B"])
@pytest.mark.parametrize("kind", ["gray", "rgba", "rgb16", "gray16", "rgba16"])
def test_modes_identical_to_reference(engine, reference, arch, kind):
    dtype = np.uint16 if kind.endswith("16") else np.uint8
    channels = {"gray": 1, "rgb": 3, "rgba": 4}[kind.rstrip("16")]
    image = smooth_image(2, 24, 20, channels, dtype)
    if channels == 4:
        image[:, :, 3] = smooth_image(3, 24, 20, 1, dtype)  # a real, varying alpha
    ours = engine.upscale(image, arch)
    theirs, _mode = reference(arch).enhance(image)
    assert ours.dtype == theirs.dtype == dtype
    assert ours.shape == theirs.shape
    assert_not_degenerate(ours)
    assert np.array_equal(ours, theirs), f"max diff {np.abs(ours.astype(int) - theirs).max()}"


@pytest.mark.parametrize("outscale", [1.0, 2.5, 3.3, 6.0])
def test_outscale_identical_to_reference(engine, reference, outscale):
    image = smooth_image(4, 21, 26)
    ours = engine.upscale(image, "general-x4v3", outscale=outscale)
    theirs, _mode = reference("general-x4v3").enhance(image, outscale=outscale)
    assert ours.shape == (int(21 * outscale), int(26 * outscale), 3)
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("arch,size", [("general-x4v3", 100), ("x2plus", 76), ("anime_6B", 76)])
def test_tiled_matches_untiled_reference(engine, reference, arch, size):
    image = smooth_image(5, size, size + 7)
    job = Job(image, engine.models[arch], None, 64)
    assert len(job.planes[0].tiles) >= 4, "the image must really be tiled"
    engine.submit(job)
    job.future.result(timeout=300)
    tiled = job.finish()
    theirs, _mode = reference(arch).enhance(image)
    diff = np.abs(tiled.astype(int) - theirs)
    assert diff.max() <= 2, f"tiled vs untiled: max diff {diff.max()}"
    assert psnr(tiled, theirs) >= 45


def test_tiled_16bit_rgba(engine):
    image = smooth_image(6, 80, 90, 4, np.uint16)
    image[:, :, 3] = smooth_image(7, 80, 90, 1, np.uint16)
    untiled = engine.upscale(image, "general-x4v3", tile=0)
    tiled = engine.upscale(image, "general-x4v3", tile=48)
    assert psnr(tiled, untiled, 65535.0) >= 45
    assert np.abs(tiled.astype(int) - untiled).max() <= 2 * 257


def test_opaque_alpha_stays_opaque_and_colour_matches_reference(engine, reference):
    image = smooth_image(8, 20, 22, 4)
    image[:, :, 3] = 255
    ours = engine.upscale(image, "general-x4v3")
    theirs, _mode = reference("general-x4v3").enhance(image)
    assert (ours[:, :, 3] == 255).all()
    assert np.array_equal(ours[:, :, :3], theirs[:, :, :3])


def test_batched_tiles_from_several_requests_stay_apart(tmp_path_factory, model_store, reference):
    """Submit before the worker starts, so the worker must batch across requests."""
    settings = Settings(models_dir=models_dir(tmp_path_factory, model_store, ["general-x4v3"]), device="cpu", tile=0,
                        max_batch=4, jobs_dir=str(tmp_path_factory.mktemp("jobs")))
    eng = Engine(settings)
    images = [smooth_image(100 + i, 24, 24) for i in range(6)]
    jobs = [Job(img, eng.models["general-x4v3"], None, 0) for img in images]
    for job in jobs:
        eng.submit(job)
    eng.start()
    try:
        outputs = []
        for job in jobs:
            job.future.result(timeout=120)
            outputs.append(job.finish())
    finally:
        eng.stop()
    assert eng.stats["batches"] == 2 and eng.stats["tiles"] == 6, dict(eng.stats)  # 4 + 2
    refs = [reference("general-x4v3").enhance(img)[0] for img in images]
    for i, out in enumerate(outputs):
        # a batch changes fp32 summation order: within 1 LSB of its own reference...
        assert np.abs(out.astype(int) - refs[i]).max() <= 1
        # ...and far from every other request's result
        for j, other in enumerate(refs):
            if j != i:
                assert np.abs(out.astype(int) - other).mean() > 10


@pytest.fixture(scope="module")
def nhwc_engine(tmp_path_factory, model_store):
    """An Engine with KBXY_UPSCALE_CPU_CHANNELS_LAST=1 (the opt-in fast CPU path)."""
    settings = Settings(models_dir=models_dir(tmp_path_factory, model_store, ALL_ARCHES), device="cpu", tile=0,
                        cpu_channels_last=True, jobs_dir=str(tmp_path_factory.mktemp("jobs")))
    eng = Engine(settings)
    eng.start()
    yield eng
    eng.stop()


@pytest.mark.parametrize("arch", ALL_ARCHES)
def test_cpu_channels_last_within_fp16_bounds_of_reference(nhwc_engine, reference, arch):
    """NHWC really runs (parameters in channels_last) and stays within 2 LSB / PSNR >= 45 dB."""
    model = nhwc_engine.models[arch].fp32
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    image = smooth_image(9, 29, 34)
    ours = nhwc_engine.upscale(image, arch)
    theirs, _mode = reference(arch).enhance(image)
    assert ours.shape == theirs.shape
    assert_not_degenerate(ours)
    diff = np.abs(ours.astype(int) - theirs)
    assert diff.max() <= 2, f"max diff {diff.max()}"
    assert psnr(ours, theirs) >= 45


@pytest.mark.parametrize("arch", ALL_ARCHES)
def test_cpu_runs_the_prepacked_onednn_forms(engine, arch):
    """The default CPU path really is the fast exact form (not the silent plain fall-back)."""
    from kbxy_upscale.engine import BlockedCompact, DenseBlockInPlace, PackedConv2d, PooledNet  # pylint: disable=import-outside-toplevel

    model = engine.models[arch].fp32
    if arch in ("general-x4v3", "animevideov3"):
        assert isinstance(model, BlockedCompact)
    else:
        packed = sum(isinstance(m, PackedConv2d) for m in model.modules())
        plain = sum(type(m) is torch.nn.Conv2d for m in model.modules()) - packed  # pylint: disable=unidiomatic-typecheck
        assert packed > 0 and plain == 0, (packed, plain)
        # RRDB networks: every dense block (3 per RRDB block) runs without its concatenations
        blocks = engine.models[arch].fp32.net.model[1].sub
        assert isinstance(model, PooledNet)
        dense = sum(isinstance(m, DenseBlockInPlace) for m in model.modules())
        assert dense == 3 * (len(blocks) - 1) > 0, dense


@pytest.mark.parametrize("arch", ["anime_6B", "x2plus"])
def test_dense_blocks_batch_and_scratch_buffer(engine, model_store, arch):
    """A batch of 2 (the blocks' concatenating path) equals the plain module bit for bit, and the
    scratch buffer of a batch-1 call is dropped afterwards (no memory kept between requests)."""
    import spandrel  # pylint: disable=import-outside-toplevel

    plain = spandrel.ModelLoader().load_from_file(model_store(arch)).model.eval()
    fast = engine.models[arch].fp32
    x = torch.rand((2, 3, 36, 40), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = plain(x)
        assert torch.equal(fast(x), expected)
        assert torch.equal(fast(x[1:]), plain(x[1:]))
    assert getattr(fast.pool.local, "buffer", None) is None


@pytest.mark.parametrize("arch", ["general-x4v3", "anime_6B"])
def test_fp32_identical_to_reference_across_the_onednn_threshold(engine, reference, arch):
    """At 84x90 even the 3-channel first convolution goes through oneDNN (at 29x34 it does not)."""
    image = smooth_image(11, 84, 90)
    ours = engine.upscale(image, arch)
    theirs, _mode = reference(arch).enhance(image)
    assert ours.shape == theirs.shape
    assert np.array_equal(ours, theirs), f"max diff {np.abs(ours.astype(int) - theirs).max()}"


@pytest.mark.parametrize("arch", ["animevideov3", "anime_6B"])
def test_fast_forms_identical_to_plain_module_on_tiny_inputs(engine, model_store, arch):
    """Inputs so small that no convolution uses oneDNN (the reference refuses them: no pre-pad)."""
    import spandrel  # pylint: disable=import-outside-toplevel

    plain = spandrel.ModelLoader().load_from_file(model_store(arch)).model.eval()
    x = torch.rand((1, 3, 5, 6), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.equal(engine.models[arch].fp32(x), plain(x))
