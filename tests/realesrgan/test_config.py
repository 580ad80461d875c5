"""Environment configuration, device choice, model loading and the decoder's guards."""
import io

import numpy as np
import pytest
import torch
from conftest import Engine, Settings, exif_png, models_dir, smooth_image
from PIL import Image, ImageOps

from kbxy_upscale import imaging
from kbxy_upscale.config import ConfigError

BASE = {"KBXY_UPSCALE_MODELS_DIR": "/nonexistent"}


def test_defaults_match_the_contract():
    settings = Settings.from_env(BASE)
    assert (settings.device, settings.allow_cpu, settings.queue_size, settings.timeout, settings.tile) == ("auto", False, 8, 120.0, 256)
    assert (settings.max_pixels, settings.jobs_dir, settings.job_ttl) == (16_000_000, "/var/lib/kbxy-upscale/jobs", 3600.0)
    assert settings.cpu_channels_last is False  # byte-identical to the reference unless asked
    assert Settings.from_env({**BASE, "KBXY_UPSCALE_CPU_CHANNELS_LAST": "1"}).cpu_channels_last is True


@pytest.mark.parametrize("env,word", [
    ({}, "KBXY_UPSCALE_MODELS_DIR"),
    ({**BASE, "KBXY_UPSCALE_DEVICE": "tpu"}, "KBXY_UPSCALE_DEVICE"),
    ({**BASE, "KBXY_UPSCALE_QUEUE_SIZE": "0"}, "KBXY_UPSCALE_QUEUE_SIZE"),
    ({**BASE, "KBXY_UPSCALE_TILE": "16"}, "KBXY_UPSCALE_TILE"),
    ({**BASE, "KBXY_UPSCALE_TIMEOUT": "soon"}, "KBXY_UPSCALE_TIMEOUT"),
    ({**BASE, "KBXY_UPSCALE_ALLOW_CPU": "maybe"}, "KBXY_UPSCALE_ALLOW_CPU"),
    ({**BASE, "KBXY_UPSCALE_CPU_CHANNELS_LAST": "fast"}, "KBXY_UPSCALE_CPU_CHANNELS_LAST"),
])
def test_bad_settings_name_the_variable(env, word):
    with pytest.raises(ConfigError, match=word):
        Settings.from_env(env)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour on a host without a GPU")
def test_cuda_without_gpu_fails_unless_cpu_allowed(tmp_path_factory, model_store):
    directory = models_dir(tmp_path_factory, model_store, ["general-x4v3"])
    with pytest.raises(RuntimeError, match="KBXY_UPSCALE_ALLOW_CPU=1"):
        Engine(Settings(models_dir=directory, device="cuda"))
    engine = Engine(Settings(models_dir=directory, device="cuda", allow_cpu=True))
    assert engine.device.type == "cpu" and engine.models["general-x4v3"].fp16 is None


def test_models_load_through_spandrel_with_their_scales(engine):
    described = engine.describe_models()
    assert {name: d["scale"] for name, d in described.items()} == {
        "anime_6B": 4, "animevideov3": 4, "general-x4v3": 4, "x2plus": 2, "x4plus": 4}
    assert described["x4plus"]["arch"] == "ESRGAN" and described["animevideov3"]["arch"] == "RealESRGAN Compact"


def test_params_key_checkpoint_and_garbage_file(tmp_path, model_store):
    state = torch.load(model_store("animevideov3"), map_location="cpu", weights_only=True)["params_ema"]
    torch.save({"params": state}, tmp_path / "plain.pth")
    engine = Engine(Settings(models_dir=str(tmp_path), device="cpu"))
    assert engine.models["plain"].scale == 4
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="broken.pth: cannot load the model"):
        Engine(Settings(models_dir=str(tmp_path), device="cpu"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientations_like_pillow(orientation):
    array = smooth_image(30, 6, 9)
    data = exif_png(array, orientation)
    ours, _fmt = imaging.decode(data, 10_000)
    pillow = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))[:, :, ::-1]
    assert np.array_equal(ours, pillow)


def test_pixel_limit_checked_before_decoding():
    buf = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buf, format="PNG")
    with pytest.raises(imaging.ImageError) as info:
        imaging.decode(buf.getvalue(), 1_000_000)
    assert info.value.status == 413
