"""kbxy-upscale over HTTP (real uvicorn on 127.0.0.1): API, bad inputs, load, jobs."""
import concurrent.futures
import io
import os
import time

import cv2
import numpy as np
import pytest
from conftest import LiveService, Settings, decode, exif_png, models_dir, png, smooth_image
from PIL import Image


def assert_up(service):
    assert service.client.get("/v1/health").status_code == 200
    ok = service.post(png(smooth_image(0, 8, 8)), params={"model": "general-x4v3"})
    assert ok.status_code == 200 and decode(ok.content).shape == (32, 32, 3)


def test_health_models_ready_metrics(service):
    health = service.client.get("/v1/health").json()
    assert health == {"status": "ok", "device": "cpu", "models": ["animevideov3", "general-x4v3"]}
    assert service.client.get("/healthz").status_code == 200
    assert service.client.get("/readyz").json() == {"status": "ready"}
    models = service.client.get("/v1/models").json()
    assert models["general-x4v3"]["scale"] == 4 and models["general-x4v3"]["arch"] == "RealESRGAN Compact"
    metrics = service.client.get("/metrics").text
    assert "kbxy_upscale_queue_depth 0" in metrics and "kbxy_upscale_input_megapixels_total" in metrics


def test_raw_and_multipart_equal_reference(service, reference):
    image = smooth_image(11, 30, 26)
    theirs, _mode = reference("general-x4v3").enhance(image)
    raw = service.post(png(image), params={"model": "general-x4v3"}, headers={"Content-Type": "image/png"})
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/png"
    assert np.array_equal(decode(raw.content), theirs)
    form = service.client.post("/v1/upscale", files={"image": ("x.png", png(image), "image/png")},
                               data={"model": "general-x4v3"})
    assert form.status_code == 200 and form.content == raw.content


def test_output_formats_and_quality(service):
    image = png(smooth_image(12, 32, 32))
    params = {"model": "animevideov3"}
    webp = service.post(image, params=params, headers={"Accept": "image/webp"})
    assert webp.headers["content-type"] == "image/webp" and webp.content[8:12] == b"WEBP"
    jpeg_hi = service.post(image, params={**params, "format": "jpg", "quality": 95})
    jpeg_lo = service.post(image, params={**params, "format": "jpeg", "quality": 10})
    assert jpeg_hi.headers["content-type"] == jpeg_lo.headers["content-type"] == "image/jpeg"
    assert len(jpeg_lo.content) < len(jpeg_hi.content)
    assert decode(jpeg_lo.content).shape == (128, 128, 3)
    either = service.post(image, params=params, headers={"Accept": "image/avif;q=1, image/jpeg;q=0.5, */*;q=0.1"})
    assert either.headers["content-type"] == "image/jpeg"


def test_alpha_gray_and_16bit_round_trips(service, reference):
    params = {"model": "general-x4v3"}
    rgba = smooth_image(13, 20, 18, 4)
    rgba[:, :, 3] = smooth_image(14, 20, 18, 1)
    out = decode(service.post(png(rgba), params=params).content)
    assert out.shape == (80, 72, 4) and np.array_equal(out, reference("general-x4v3").enhance(rgba)[0])
    webp = decode(service.post(png(rgba), params={**params, "format": "webp", "quality": 100}).content)
    assert webp.shape == (80, 72, 4) and np.abs(webp[:, :, 3].astype(int) - out[:, :, 3]).mean() < 3
    gray = smooth_image(15, 20, 18, 1)
    out = decode(service.post(png(gray), params=params).content)
    assert out.ndim == 2 and np.array_equal(out, reference("general-x4v3").enhance(gray)[0])
    deep = smooth_image(16, 20, 18, 3, np.uint16)
    out = decode(service.post(png(deep), params=params).content)
    assert out.dtype == np.uint16 and np.array_equal(out, reference("general-x4v3").enhance(deep)[0])
    deep_rgba = smooth_image(17, 20, 18, 4, np.uint16)
    out = decode(service.post(png(deep_rgba), params=params).content)
    assert out.dtype == np.uint16 and out.shape == (80, 72, 4)


def test_outscale_over_http(service, reference):
    image = smooth_image(18, 22, 30)
    response = service.post(png(image), params={"model": "general-x4v3", "outscale": "1.5"})
    assert response.headers["x-image-size"] == "45x33"
    assert np.array_equal(decode(response.content), reference("general-x4v3").enhance(image, outscale=1.5)[0])


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applied(service, reference, orientation):
    image = smooth_image(19, 20, 28)
    upright = np.ascontiguousarray(np.array(
        Image.open(io.BytesIO(exif_png(image, orientation))).transpose(
            {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}[orientation])))
    upright = cv2.cvtColor(upright, cv2.COLOR_RGB2BGR)
    response = service.post(exif_png(image, orientation), params={"model": "general-x4v3"})
    out = decode(response.content)
    assert out.shape[:2] == (upright.shape[0] * 4, upright.shape[1] * 4)
    assert np.array_equal(out, reference("general-x4v3").enhance(upright)[0])


def _bomb_png(side):
    """A 1-bit PNG of side x side pixels: a few KB on the wire, side^2 pixels decoded."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_bad_inputs_get_clear_codes_and_the_service_stays_up(service):
    good = png(smooth_image(20, 16, 16))
    jpeg = cv2.imencode(".jpg", smooth_image(21, 64, 64))[1].tobytes()
    rgba = png(smooth_image(22, 16, 16, 4))
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    cases = [
        ("empty body", b"", {}, {}, 400),
        ("not an image", b"hello, this is text" * 10, {}, {}, 415),
        ("GIF is not accepted", gif.getvalue(), {}, {}, 415),
        ("truncated PNG", good[: len(good) // 2], {}, {}, 400),
        ("truncated JPEG", jpeg[: len(jpeg) * 2 // 3], {}, {}, 400),
        ("corrupt PNG CRC", good[:60] + bytes([good[60] ^ 0xFF]) + good[61:], {}, {}, 400),
        ("too many pixels", png(np.zeros((401, 400, 3), np.uint8)), {}, {}, 413),
        ("decompression bomb", _bomb_png(5000), {}, {}, 413),
        ("body too large", b"\x89PNG" + bytes(160_000 * 8 + (1 << 20)), {}, {}, 413),
        ("unknown model", good, {"model": "nope"}, {}, 404),
        ("model ambiguous", good, {"model": ""}, {}, 422),
        ("outscale zero", good, {"outscale": "0"}, {}, 422),
        ("outscale negative", good, {"outscale": "-2"}, {}, 422),
        ("outscale nan", good, {"outscale": "nan"}, {}, 422),
        ("outscale text", good, {"outscale": "big"}, {}, 422),
        ("outscale huge", good, {"outscale": "100"}, {}, 422),
        ("outscale to nothing", good, {"outscale": "0.01"}, {}, 422),
        ("bad format", good, {"format": "gif"}, {}, 422),
        ("bad quality", good, {"format": "jpeg", "quality": "0"}, {}, 422),
        ("unsatisfiable Accept", good, {}, {"Accept": "image/gif"}, 406),
        ("JPEG cannot hold alpha", rgba, {"format": "jpeg"}, {}, 422),
    ]
    for name, body, params, headers, status in cases:
        params = {"model": "general-x4v3", **params}
        response = service.post(body, params=params, headers=headers)
        assert response.status_code == status, f"{name}: {response.status_code} {response.text[:200]}"
        assert response.json()["detail"], name
    multipart_without_file = service.client.post("/v1/upscale", data={"model": "general-x4v3"},
                                                 files={"other": (None, "x")})
    assert multipart_without_file.status_code == 400
    assert_up(service)


def test_concurrent_requests_each_get_their_own_result(service, reference):
    images = [smooth_image(200 + i, 24 + i % 3, 24) for i in range(8)]
    expected = [reference("general-x4v3").enhance(img)[0] for img in images]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(service.post, png(img), params={"model": "general-x4v3"}) for img in images]
        responses = [f.result() for f in futures]
    for response, want in zip(responses, expected):
        assert response.status_code == 200
        assert np.array_equal(decode(response.content), want)


def test_job_lifecycle_and_expiry(service):
    image = png(smooth_image(23, 20, 20))
    sync = service.post(image, params={"model": "general-x4v3", "format": "webp"})
    created = service.client.post("/v1/jobs", content=image, params={"model": "general-x4v3", "format": "webp"})
    assert created.status_code == 202
    job = created.json()
    assert created.headers["location"] == job["status_url"] == f"/v1/jobs/{job['id']}"
    deadline = time.monotonic() + 60
    while (status := service.client.get(job["status_url"]).json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    assert status["status"] == "done" and status["size"] == [80, 80]
    result = service.client.get(job["result_url"])
    assert result.status_code == 200 and result.headers["content-type"] == "image/webp"
    assert result.content == sync.content
    path = os.path.join(service.settings.jobs_dir, job["id"] + ".result")
    assert os.path.exists(path)
    # TTL is 2 s: the reaper deletes the file, then the job answers 410 Gone.
    deadline = time.monotonic() + 15
    while os.path.exists(path):
        assert time.monotonic() < deadline, "result not expired"
        time.sleep(0.2)
    assert service.client.get(job["status_url"]).status_code == 410
    assert service.client.get(job["result_url"]).status_code == 410
    assert service.client.get("/v1/jobs/" + "0" * 32).status_code == 404
    assert service.client.get("/v1/jobs/../etc").status_code == 404
    bad = service.client.post("/v1/jobs", content=b"not an image", params={"model": "general-x4v3"})
    assert bad.status_code == 415


@pytest.fixture(scope="module")
def slow_service(tmp_path_factory, model_store):
    """x4plus (35.9 MFLOP per input pixel), tiles of 48 px, a queue of 1 and a 3 s timeout."""
    settings = Settings(models_dir=models_dir(tmp_path_factory, model_store, ["x4plus"]), device="cpu", tile=48,
                        queue_size=1, timeout=3.0, jobs_dir=str(tmp_path_factory.mktemp("jobs")))
    live = LiveService(settings)
    yield live
    live.stop()


def test_queue_full_429_then_timeout_504_then_recovers(slow_service):
    big = png(smooth_image(24, 200, 200))  # 25+ tiles, > 1.4 TFLOP: far beyond 3 s on a CPU
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(slow_service.post, big)
        deadline = time.monotonic() + 30
        while "kbxy_upscale_queue_depth 1" not in slow_service.client.get("/metrics").text:
            assert time.monotonic() < deadline and not first.done(), "first request never queued"
            time.sleep(0.02)
        second = slow_service.post(big)
        assert second.status_code == 429, second.text
        assert int(second.headers["retry-after"]) >= 1
        assert first.result().status_code == 504
    deadline = time.monotonic() + 120
    while "kbxy_upscale_queue_depth 0" not in slow_service.client.get("/metrics").text:
        assert time.monotonic() < deadline, "worker never drained the cancelled request"
        time.sleep(0.1)
    small = slow_service.post(png(smooth_image(25, 8, 8)))
    assert small.status_code == 200 and decode(small.content).shape == (32, 32, 3)
    metrics = slow_service.client.get("/metrics").text
    assert 'kbxy_upscale_responses_total{code="429"} 1' in metrics
    assert 'kbxy_upscale_responses_total{code="504"} 1' in metrics
