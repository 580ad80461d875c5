"""Benchmark of kbxy-upscale against realesrgan.RealESRGANer (the reference), same process.

    .venv-esrgan/bin/python tests/bench/realesrgan_bench.py            # CPU, 64 and 128 px
    .venv-esrgan/bin/python tests/bench/realesrgan_bench.py --gpu      # CUDA sizes, fp16

For x4plus and general-x4v3 (seeded random weights in the official format: the cost of a
network does not depend on its weight values), input megapixels per second of:
1. model only: our worker's forward vs RealESRGANer.process() on the same padded tensor;
2. end to end: PNG bytes -> decode -> upscale -> encode PNG, ours vs cv2 + enhance();
3. over HTTP: uvicorn (a subprocess on 127.0.0.1) at concurrency 1, 4 and 16 (ours only:
   the reference has no server).
Ours and the reference alternate run by run on the same arrays; the median is reported with
the ratio ours/reference. Every loop is bounded (--repeats, --http-requests, --http-seconds).
With --gpu: 512x512, 1280x720, 1920x1080 and a tiled 4000x3000, peak GPU memory, and the share
of the H100's dense fp16 peak (990 TFLOP/s) from the FLOP per input pixel of each network.
Prints one JSON document (and a table on stderr).
"""
import argparse
import concurrent.futures
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision.transforms.functional as tv_functional

sys.modules.setdefault("torchvision.transforms.functional_tensor", tv_functional)
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))
import make_esrgan_model  # noqa: E402  pylint: disable=wrong-import-position

MFLOP_PER_PIXEL = {"x4plus": 35.85, "general-x4v3": 2.42}
H100_FP16_TFLOPS = 990.0


def image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((height, width, 3)).astype(np.float32), (0, 0), 2.0)
    base = (base - base.min()) / (np.ptp(base) + 1e-6)
    return np.clip(base * 255 + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def alternate(ours, theirs, repeats, device):
    """Run ours/theirs alternately ``repeats`` times (after one warm-up each): medians in s."""
    times = {"ours": [], "ref": []}
    ours()
    theirs()
    for _round in range(repeats):
        for name, func in (("ours", ours), ("ref", theirs)):
            sync(device)
            start = time.perf_counter()
            func()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["ours"]), statistics.median(times["ref"])


def bench_inprocess(arch, model_path, sizes, args, device):
    from realesrgan import RealESRGANer  # pylint: disable=import-outside-toplevel

    from kbxy_upscale import imaging  # pylint: disable=import-outside-toplevel
    from kbxy_upscale.config import Settings  # pylint: disable=import-outside-toplevel
    from kbxy_upscale.engine import Engine, Job  # pylint: disable=import-outside-toplevel

    models_dir = os.path.dirname(model_path)
    rows = []
    for height, width, tile in sizes:
        settings = Settings(models_dir=models_dir, device=device.type, tile=tile, jobs_dir=tempfile.mkdtemp(),
                            max_pixels=10**9)
        engine = Engine(settings)
        engine.start()
        kind, kwargs = make_esrgan_model.ARCHES[arch]
        rrdb, srvgg = make_esrgan_model._reference_classes()  # pylint: disable=protected-access
        net = rrdb(**kwargs) if kind == "rrdb" else srvgg(**kwargs)
        half = device.type == "cuda"
        ref = RealESRGANer(scale=kwargs.get("scale", kwargs.get("upscale")), model_path=model_path, model=net, tile=tile,
                           tile_pad=10, pre_pad=10, half=half, device=device)
        img = image(height, width)
        megapixels = height * width / 1e6
        row = {"arch": arch, "size": f"{width}x{height}", "tile": tile}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if not tile:  # model only: the network on the same padded tensor
            job = Job(img, engine.models[arch], None, 0)
            tile_obj = job.planes[0].tiles[0]

            def ours_model():
                engine._forward(engine.models[arch], [tile_obj])  # pylint: disable=protected-access

            def ref_model():
                ref.pre_process(cv2.cvtColor(img.astype(np.float32) / 255, cv2.COLOR_BGR2RGB))
                ref.process()

            t_ours, t_ref = alternate(ours_model, ref_model, args.repeats, device)
            row.update(model_mps_ours=megapixels / t_ours, model_mps_ref=megapixels / t_ref)
        data = cv2.imencode(".png", img)[1].tobytes()

        def ours_e2e():
            array, _fmt = imaging.decode(data, settings.max_pixels)
            imaging.encode(engine.upscale(array, arch), "png")

        def ref_e2e():
            array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            cv2.imencode(".png", ref.enhance(array)[0], [cv2.IMWRITE_PNG_COMPRESSION, 1])

        t_ours, t_ref = alternate(ours_e2e, ref_e2e, args.repeats, device)
        row.update(e2e_mps_ours=megapixels / t_ours, e2e_mps_ref=megapixels / t_ref)
        if device.type == "cuda":
            row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
            row["share_of_h100_fp16_peak"] = row["e2e_mps_ours"] * 1e6 * MFLOP_PER_PIXEL[arch] * 1e6 / (H100_FP16_TFLOPS * 1e12)
        engine.stop()
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def _post(url, arch, data, stop, latencies, codes, _index):  # pylint: disable=too-many-arguments
    import httpx  # pylint: disable=import-outside-toplevel

    if time.monotonic() > stop:
        return
    start = time.perf_counter()
    response = httpx.post(url + "/v1/upscale", content=data, params={"model": arch}, timeout=600)
    latencies.append(time.perf_counter() - start)
    codes[response.status_code] = codes.get(response.status_code, 0) + 1


def bench_http(arch, model_path, size, args, device):
    """uvicorn in a subprocess; bounded concurrent clients; input megapixels per second."""
    import httpx  # pylint: disable=import-outside-toplevel

    env = dict(os.environ, KBXY_UPSCALE_MODELS_DIR=os.path.dirname(model_path), KBXY_UPSCALE_DEVICE=device.type,
               KBXY_UPSCALE_QUEUE_SIZE="32", KBXY_UPSCALE_JOBS_DIR=tempfile.mkdtemp(), KBXY_UPSCALE_TILE="256")
    port = 18000 + os.getpid() % 1000
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "kbxy_upscale.app:create_app", "--factory", "--host", "127.0.0.1",
                               "--port", str(port), "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("uvicorn did not become ready")
            time.sleep(0.2)
        data = cv2.imencode(".png", image(size, size))[1].tobytes()
        for concurrency in (1, 4, 16):
            total = max(concurrency, min(args.http_requests, 4 * concurrency))
            stop = time.monotonic() + args.http_seconds
            latencies, codes = [], {}
            one = functools.partial(_post, url, arch, data, stop, latencies, codes)

            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(one, range(total)))
            elapsed = time.perf_counter() - start
            done = codes.get(200, 0)
            row = {"arch": arch, "size": f"{size}x{size}", "concurrency": concurrency, "requests": sum(codes.values()),
                   "codes": codes, "mps": done * size * size / 1e6 / elapsed,
                   "p50_s": statistics.median(latencies) if latencies else None}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return rows


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {str(k): _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--gpu", action="store_true", help="CUDA sizes (512, 720p, 1080p, tiled 4000x3000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--http-requests", type=int, default=32, help="at most this many requests per concurrency level")
    parser.add_argument("--http-seconds", type=float, default=60.0, help="stop sending after this long per level")
    parser.add_argument("--arches", default="general-x4v3,x4plus")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--sizes", default="", help="square CPU sizes instead of 64,128 (e.g. 64)")
    parser.add_argument("--skip-http", action="store_true", help="in-process measurements only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.gpu else "cpu")
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu needs a CUDA device")
    cpu_sizes = [(int(n), int(n), 0) for n in args.sizes.split(",")] if args.sizes else [(64, 64, 0), (128, 128, 0)]
    sizes = [(512, 512, 0), (720, 1280, 0), (1080, 1920, 0), (3000, 4000, 512)] if args.gpu else cpu_sizes
    http_size = 512 if args.gpu else 64
    results = {"device": torch.cuda.get_device_name() if args.gpu else f"cpu x{torch.get_num_threads()} threads",
               "torch": torch.__version__, "inprocess": [], "http": []}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arches.split(","):
            directory = os.path.join(tmp, arch)
            os.makedirs(directory)
            path = make_esrgan_model.write(arch, seed=1, out=os.path.join(directory, arch + ".pth"))
            results["inprocess"] += bench_inprocess(arch, path, sizes, args, device)
            if not args.skip_http:
                results["http"] += bench_http(arch, path, http_size, args, device)
    for row in results["inprocess"]:
        for kind in ("model", "e2e"):
            if f"{kind}_mps_ours" in row:
                row[f"{kind}_ratio"] = row[f"{kind}_mps_ours"] / row[f"{kind}_mps_ref"]
    print(json.dumps(_rounded(results), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
