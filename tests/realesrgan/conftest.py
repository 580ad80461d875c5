"""Fixtures for the kbxy-upscale tests: seeded models, the reference, and live services.

Runs from .venv-esrgan (tests/scripts/setup-realesrgan.sh), on the CPU, on small images.
"""
import io
import os
import pathlib
import sys
import threading
import time

import cv2
import httpx
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as tv_functional

# basicsr 1.4.2 imports a module torchvision removed in 0.17: alias it before importing.
sys.modules.setdefault("torchvision.transforms.functional_tensor", tv_functional)

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))
import make_esrgan_model  # noqa: E402  pylint: disable=wrong-import-position

from kbxy_upscale.app import create_app  # noqa: E402  pylint: disable=wrong-import-position
from kbxy_upscale.config import Settings  # noqa: E402  pylint: disable=wrong-import-position
from kbxy_upscale.engine import Engine  # noqa: E402  pylint: disable=wrong-import-position

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
ALL_ARCHES = sorted(make_esrgan_model.ARCHES)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory):
    """Make each seeded model once per session; ``model_store(arch) -> path``."""
    base = tmp_path_factory.mktemp("models")
    made = {}

    def get(arch):
        if arch not in made:
            made[arch] = make_esrgan_model.write(arch, seed=7, out=str(base / f"{arch}.pth"))
        return made[arch]

    return get


def models_dir(tmp_path_factory, model_store, arches):
    """A KBXY_UPSCALE_MODELS_DIR holding links to the given models."""
    directory = tmp_path_factory.mktemp("modeldir")
    for arch in arches:
        os.symlink(model_store(arch), directory / f"{arch}.pth")
    return str(directory)


@pytest.fixture(scope="session")
def reference(model_store):
    """``reference(arch, tile=0) -> RealESRGANer`` built from the reference's own classes."""
    from realesrgan import RealESRGANer  # pylint: disable=import-outside-toplevel

    cache = {}

    def get(arch, tile=0):
        if (arch, tile) not in cache:
            kind, kwargs = make_esrgan_model.ARCHES[arch]
            rrdb, srvgg = make_esrgan_model._reference_classes()  # pylint: disable=protected-access
            net = rrdb(**kwargs) if kind == "rrdb" else srvgg(**kwargs)
            scale = kwargs.get("scale", kwargs.get("upscale"))
            cache[(arch, tile)] = RealESRGANer(scale=scale, model_path=model_store(arch), model=net, tile=tile, pre_pad=10,
                                               half=False, device=torch.device("cpu"))
        return cache[(arch, tile)]

    return get


@pytest.fixture(scope="session")
def engine(tmp_path_factory, model_store):
    """An Engine (no HTTP) with all five models, untiled by default, batches of 1."""
    settings = Settings(models_dir=models_dir(tmp_path_factory, model_store, ALL_ARCHES), device="cpu", tile=0,
                        jobs_dir=str(tmp_path_factory.mktemp("jobs")))
    eng = Engine(settings)
    eng.start()
    yield eng
    eng.stop()


class LiveService:
    """kbxy-upscale under a real uvicorn on 127.0.0.1 (random port) in a thread."""

    def __init__(self, settings):
        import uvicorn  # pylint: disable=import-outside-toplevel

        self.settings = settings
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def post(self, data, **kwargs):
        return self.client.post("/v1/upscale", content=data, **kwargs)

    def stop(self):
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=60)


@pytest.fixture(scope="session")
def service(tmp_path_factory, model_store):
    """The main service: the two light models, small pixel limit, 2 s job TTL."""
    settings = Settings(models_dir=models_dir(tmp_path_factory, model_store, ["general-x4v3", "animevideov3"]), device="cpu",
                        tile=0, max_pixels=160_000, queue_size=8, timeout=60, jobs_dir=str(tmp_path_factory.mktemp("jobs")),
                        job_ttl=2.0)
    live = LiveService(settings)
    yield live
    live.stop()


def png(array):
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


def decode(data):
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert array is not None, data[:200]
    return array


def psnr(a, b, peak=255.0):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(peak ** 2 / mse)


def smooth_image(seed, height, width, channels=3, dtype=np.uint8):
    """A random but photo-like image (blurred noise plus gradients), full range."""
    rng = np.random.default_rng(seed)
    noise = rng.random((height, width, channels)).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), 2.0)
    if blurred.ndim == 2:
        blurred = blurred[:, :, None]
    grad = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    mix = 0.5 * (blurred - blurred.min()) / (np.ptp(blurred) + 1e-6) + 0.5 * grad
    top = 65535 if dtype == np.uint16 else 255
    out = np.clip(mix * top + rng.normal(0, 0.02 * top, mix.shape), 0, top).round().astype(dtype)
    return out[:, :, 0] if channels == 1 else out


def exif_png(array_bgr, orientation):
    """A PNG whose eXIf chunk says ``orientation`` (written by Pillow)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    image = Image.fromarray(cv2.cvtColor(array_bgr, cv2.COLOR_BGR2RGB))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, format="PNG", exif=exif.tobytes())
    return buf.getvalue()
