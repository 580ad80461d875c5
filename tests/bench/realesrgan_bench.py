"""Benchmark of kbxy-upscale against realesrgan.RealESRGANer (the reference), same process.

    .venv-esrgan/bin/python tests/bench/realesrgan_bench.py --out build/bench/realesrgan-cpu.json
    .venv-esrgan/bin/python tests/bench/realesrgan_bench.py --gpu      # CUDA sizes, fp16

For x4plus and general-x4v3 (seeded random weights in the official format: the cost of a
network does not depend on its weight values), input megapixels per second of:
1. model only: the network on the same pre-padded tensor. Ours: the worker's ``_forward``
   (inference_mode); reference: ``RealESRGANer.process()`` under ``torch.no_grad()``, the
   mode ``enhance()`` runs it in. ``pre_process`` (tensor conversion and padding) is done once,
   outside the timing, for both: like with like.
2. end to end: the same PNG bytes -> decode -> upscale -> PNG (zlib level 1) for both sides.
   Ours does more work than the reference here (header probe, EXIF orientation, a CRC walk
   of the PNG against truncation, a hand-off to the worker thread and back): not removed.
3. over HTTP: uvicorn (a subprocess on 127.0.0.1, default settings) at concurrency 1, 4 and
   16 (ours only: the reference has no server); a bounded number of requests per level.
Variants: ``ours`` (the default, byte-identical to the reference: the model-only warm-up
records max |ours - ref| of the network outputs, 0 on the CPU), ``ours_nhwc`` (the opt-in
KBXY_UPSCALE_CPU_CHANNELS_LAST=1, CPU only, up to --nhwc-max-side px; channels_last is always
on with CUDA) and ``ref``.
They run alternately, one call each per round, the order rotating each round, after one
warm-up call each; for each round the ratio ours/ref (speed, > 1 = ours faster) is taken
from the calls of that same round, and the median over rounds is reported with its spread
(min and max): a shared, noisy machine slows neighbours in a round alike. Every loop is
bounded (--rounds, --http-requests, --http-seconds).
With --gpu: 512x512, 1280x720, 1920x1080 and a tiled 4000x3000, peak GPU memory, and the share
of the H100's dense fp16 peak (990 TFLOP/s) from the FLOP per input pixel of each network.
Also with --gpu, for each untiled size: our fp16 network against our fp32 network on the same padded
input (PSNR and max |difference| of the 8-bit outputs). That is the one thing the run asserts: below
FP16_MIN_PSNR_DB, or any NaN/inf in the fp16 output, it still writes everything, then exits 1 with a
message naming the cases. Speed is never asserted: it stays a reported ratio.
Prints one JSON document (and a table on stderr); --out also writes it to a file.
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
# The bound on fp16 vs fp32 (--gpu), on the outputs quantised to 8 bits as the service returns them.
# PSNR >= 40 dB is an RMS difference of at most 255 / 10**(40/20) = 2.55 levels: the usual threshold
# of "visually lossless" (high-quality JPEG/video encodes land around 40-45 dB). fp16 keeps an 11-bit
# significand (relative rounding 2**-11, about 0.12 of an 8-bit level at full scale); even summed over
# the dozens of layers of x4plus that stays near or below one level RMS (~50 dB and up), and this
# package's own tests hold tiling and NHWC to 45 dB. 40 dB leaves room for the seeded random weights
# (not trained to be smooth, so they amplify rounding more than the released ones) and still fails on
# real fp16 breakage: a black or saturated stretch, an overflow, a weight left in the wrong precision
# (each well under 30 dB). A bound on the maximum alone would not be stable: out of tens of millions
# of output values a few may flip by more than a few levels where a steep activation meets a rounding,
# so the maximum is reported, not asserted. NaN/inf in the fp16 output fail whatever the PSNR.
FP16_MIN_PSNR_DB = 40.0


def image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((height, width, 3)).astype(np.float32), (0, 0), 2.0)
    base = (base - base.min()) / (np.ptp(base) + 1e-6)
    return np.clip(base * 255 + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def alternate(funcs, args, device, warmup=True):
    """Call each of ``funcs`` (name -> callable) once per round, rotating the order.

    At least ``args.rounds`` rounds; cheap cases go on until ``args.case_seconds`` have passed
    (at most ``args.max_rounds``), for a steadier median. Returns name -> per-round seconds.
    """
    names = list(funcs)
    if warmup:
        for name in names:
            funcs[name]()
    times = {name: [] for name in names}
    start_case = time.monotonic()
    index = 0
    while index < args.rounds or (time.monotonic() - start_case < args.case_seconds and index < args.max_rounds):
        for name in names[index % len(names):] + names[:index % len(names)]:
            sync(device)
            start = time.perf_counter()
            funcs[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
        index += 1
    return times


def summarise(times, megapixels, kind):
    """Median MP/s of each variant and, per variant, the median and spread of round ratios vs ref."""
    row = {f"{kind}_rounds": len(times["ref"])}
    row.update({f"{kind}_mps_{name}": megapixels / statistics.median(values) for name, values in times.items()})
    for name, values in times.items():
        if name == "ref":
            continue
        ratios = [ref / ours for ours, ref in zip(values, times["ref"])]
        row[f"{kind}_ratio_{name}"] = statistics.median(ratios)
        row[f"{kind}_ratio_{name}_spread"] = [min(ratios), max(ratios)]
    return row


def fp16_vs_fp32(model, x, device):
    """Our fp16 network against our fp32 one on the padded input ``x``, as ``Engine._forward`` feeds them
    (channels_last on CUDA), before any fp32 redo: PSNR (dB) and max |difference| of the 8-bit outputs."""
    with torch.inference_mode():
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        half = model.fp16(x.half()).float()
        nonfinite = int((~torch.isfinite(half)).sum())
        half = (half.clamp(0, 1) * 255).round()
        full = (model.fp32(x).clamp(0, 1) * 255).round()
        diff = (half - full).abs()
        mse = float(diff.double().square().mean())
        row = {"fp16_nonfinite": nonfinite, "fp16_max_abs_diff_levels": float(diff.max()),
               "fp16_share_over_2_levels": float((diff > 2).double().mean())}
    # identical outputs read as 148 dB (JSON has no infinity)
    row["fp16_psnr_db"] = None if nonfinite else float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))
    return row


def fp16_failures(results):
    """The rows whose fp16 output is beyond the bound, as messages."""
    failures = []
    for row in results["inprocess"]:
        if "fp16_nonfinite" not in row:  # CPU, tiled, or a model without an fp16 network
            continue
        where = f"{row['arch']} {row['size']}"
        if row["fp16_nonfinite"]:
            failures.append(f"{where}: fp16 output has {row['fp16_nonfinite']} NaN/inf values")
        elif row["fp16_psnr_db"] < FP16_MIN_PSNR_DB:
            failures.append(f"{where}: fp16 vs fp32 PSNR {row['fp16_psnr_db']:.2f} dB < {FP16_MIN_PSNR_DB} dB "
                            f"(max |diff| {row['fp16_max_abs_diff_levels']:.0f} levels)")
    return failures


def _engine(settings_cls, engine_cls, models_dir, device, tile, nhwc):
    settings = settings_cls(models_dir=models_dir, device=device.type, tile=tile, jobs_dir=tempfile.mkdtemp(),
                            max_pixels=10**9, cpu_channels_last=nhwc)
    engine = engine_cls(settings)
    engine.start()
    engine.warm_up()
    return engine


def bench_inprocess(arch, model_path, sizes, args, device):  # pylint: disable=too-many-locals
    from realesrgan import RealESRGANer  # pylint: disable=import-outside-toplevel

    from kbxy_upscale import imaging  # pylint: disable=import-outside-toplevel
    from kbxy_upscale.config import Settings  # pylint: disable=import-outside-toplevel
    from kbxy_upscale.engine import Engine, Job  # pylint: disable=import-outside-toplevel

    models_dir = os.path.dirname(model_path)
    rows = []
    for height, width, tile in sizes:
        engines = {"ours": _engine(Settings, Engine, models_dir, device, tile, False)}
        if device.type == "cpu" and max(height, width) <= args.nhwc_max_side:  # CUDA: "ours" is channels_last already
            engines["ours_nhwc"] = _engine(Settings, Engine, models_dir, device, tile, True)
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
        warm = True
        if not tile:  # model only: the network on the same padded tensor
            funcs = {}
            for name, engine in engines.items():
                tile_obj = Job(img, engine.models[arch], None, 0).planes[0].tiles[0]
                funcs[name] = functools.partial(engine._forward, engine.models[arch], [tile_obj])  # pylint: disable=protected-access
            ref.pre_process(cv2.cvtColor(img.astype(np.float32) / 255, cv2.COLOR_BGR2RGB))
            if not torch.equal(ref.img, tile_obj.input()):
                raise RuntimeError("the reference's padded input differs from ours")

            def ref_model():
                with torch.no_grad():  # as in RealESRGANer.enhance
                    ref.process()
                return ref.output

            funcs["ref"] = ref_model
            for name, func in funcs.items():  # the warm-up calls; they also check the results
                out = func()
                if name == "ours":
                    ours_out = out[0]
            # fp32 (CPU): ours must be bit-identical to the reference; fp16 (CUDA): close.
            row["model_max_abs_diff_vs_ref"] = float((ours_out.float() - ref.output.float()).abs().max())
            check_input = tile_obj.input()
            row.update(summarise(alternate(funcs, args, device, warmup=False), megapixels, "model"))
            warm = False  # the same shapes have just run: the e2e calls need no other warm-up
        data = cv2.imencode(".png", img)[1].tobytes()

        def ours_e2e(engine):
            array, _fmt = imaging.decode(data, engine.settings.max_pixels)
            imaging.encode(engine.upscale(array, arch), "png")

        def ref_e2e():
            array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            ok, _buf = cv2.imencode(".png", ref.enhance(array)[0], [cv2.IMWRITE_PNG_COMPRESSION, 1])
            assert ok

        funcs = {name: functools.partial(ours_e2e, engine) for name, engine in engines.items()}
        funcs["ref"] = ref_e2e
        row.update(summarise(alternate(funcs, args, device, warmup=warm), megapixels, "e2e"))
        if device.type == "cuda":
            row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
            row["share_of_h100_fp16_peak"] = row["e2e_mps_ours"] * 1e6 * MFLOP_PER_PIXEL[arch] * 1e6 / (H100_FP16_TFLOPS * 1e12)
            loaded = engines["ours"].models[arch]
            if not tile and loaded.fp16 is None:
                row["fp16_network"] = False
                print(f"warning: {arch} has no fp16 network: 'ours' ran in fp32, nothing to check", file=sys.stderr)
            elif not tile:  # after the peak memory is read: this extra fp32 pass is not part of the measurement
                row.update(fp16_vs_fp32(loaded, check_input, device))
        for engine in engines.values():
            engine.stop()
        rows.append(row)
        print(json.dumps(_rounded(row)), file=sys.stderr, flush=True)
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
               KBXY_UPSCALE_QUEUE_SIZE="32", KBXY_UPSCALE_JOBS_DIR=tempfile.mkdtemp(), KBXY_UPSCALE_TILE="256",
               KBXY_UPSCALE_TIMEOUT="600")
    if args.threads:
        env["KBXY_UPSCALE_THREADS"] = str(args.threads)
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
            total = min(args.http_requests, max(4, 2 * concurrency))
            stop = time.monotonic() + args.http_seconds
            latencies, codes = [], {}
            one = functools.partial(_post, url, arch, data, stop, latencies, codes)

            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(one, range(total)))
            elapsed = time.perf_counter() - start
            done = codes.get(200, 0)
            if codes.get(200, 0) != sum(codes.values()):
                print(f"warning: non-200 answers {codes}", file=sys.stderr)
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
    parser.add_argument("--rounds", "--repeats", type=int, default=3, help="alternating rounds per case (>= 3)")
    parser.add_argument("--case-seconds", type=float, default=12.0, help="more rounds while a case has run less than this")
    parser.add_argument("--max-rounds", type=int, default=25, help="at most this many rounds per case")
    parser.add_argument("--http-requests", type=int, default=16, help="at most this many requests per concurrency level")
    parser.add_argument("--http-seconds", type=float, default=45.0, help="stop sending after this long per level")
    parser.add_argument("--arches", default="general-x4v3,x4plus")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--sizes", default="", help="square CPU sizes instead of 64,128 (e.g. 64)")
    parser.add_argument("--skip-http", action="store_true", help="in-process measurements only")
    parser.add_argument("--nhwc-max-side", type=int, default=64,
                        help="CPU: measure the opt-in channels_last variant up to this size (0: never)")
    parser.add_argument("--out", help="also write the JSON document to this file")
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be at least 3 (a median and a spread need them)")
    started = time.monotonic()
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
    results["wall_s"] = time.monotonic() - started
    failures = fp16_failures(results)
    if args.gpu:
        results["fp16_min_psnr_db"] = FP16_MIN_PSNR_DB
        results["fp16_failures"] = failures
    print_table(results)
    document = json.dumps(_rounded(results), indent=1)
    print(document)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(document + "\n")
    if failures:
        print(f"FAIL: fp16 output differs from fp32 beyond the bound (PSNR >= {FP16_MIN_PSNR_DB} dB of the 8-bit outputs, "
              "no NaN/inf):\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def print_table(results):
    """The ratios (median [min-max] over rounds) and MP/s, on stderr."""
    out = sys.stderr
    print(f"\n{results['device']}, torch {results['torch']}; ratio = speed ours/ref, median [min-max] of rounds", file=out)
    for row in results["inprocess"]:
        if "model_max_abs_diff_vs_ref" in row:
            print(f"{row['arch']:13s} {row['size']:>9s} model output max |ours - ref| = {row['model_max_abs_diff_vs_ref']:.3g}", file=out)
        if row.get("fp16_psnr_db") is not None:
            print(f"{row['arch']:13s} {row['size']:>9s} fp16 vs fp32 (8-bit): PSNR {row['fp16_psnr_db']:.2f} dB "
                  f"(bound {FP16_MIN_PSNR_DB}), max |diff| {row['fp16_max_abs_diff_levels']:.0f} levels, "
                  f"{row['fp16_share_over_2_levels']:.2e} of values > 2 levels", file=out)
        for kind in ("model", "e2e"):
            for name in ("ours", "ours_nhwc"):
                if f"{kind}_ratio_{name}" not in row:
                    continue
                low, high = row[f"{kind}_ratio_{name}_spread"]
                print(f"{row['arch']:13s} {row['size']:>9s} {kind:5s} {name:9s} ratio {row[f'{kind}_ratio_{name}']:5.2f} "
                      f"[{low:4.2f}-{high:4.2f}]  {row[f'{kind}_mps_{name}']:.4f} vs {row[f'{kind}_mps_ref']:.4f} MP/s", file=out)
    for row in results["http"]:
        print(f"{row['arch']:13s} {row['size']:>9s} http c={row['concurrency']:<2d} {row['requests']:3d} requests {row['codes']} "
              f"{row['mps']:.4f} MP/s p50 {row['p50_s'] or 0:.2f} s", file=out)


if __name__ == "__main__":
    sys.exit(main())
