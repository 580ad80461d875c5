"""Compare an upscale that a deployed kbxy-upscale answered with the same upscale made here.

    .venv-esrgan/bin/python tests/helpers/esrgan_reference.py --model M.pth --tile 128 IN.png ANSWER.png

Runs the service's own code (kbxy_upscale: decode, Engine on the CPU, the same model file
and tile size) on the controller and prints one JSON line: the shapes, the largest
per-sample difference in 8-bit levels, the PSNR of the answer against this reference, and
both images' mean and standard deviation. A black, grey or shifted answer has a large
difference; the molecule tests bound it (the CPU path differs by at most an LSB or two
when thread counts change the order of fp32 sums).
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np

from kbxy_upscale.config import Settings
from kbxy_upscale.engine import Engine
from kbxy_upscale.imaging import decode


def compare(model, tile, source, answer):
    """The comparison of ``answer`` (PNG bytes) with the local upscale of ``source``."""
    name = os.path.basename(model)[:-4]
    with tempfile.TemporaryDirectory() as work:
        os.mkdir(os.path.join(work, "models"))
        os.symlink(os.path.abspath(model), os.path.join(work, "models", name + ".pth"))
        engine = Engine(Settings(models_dir=os.path.join(work, "models"), device="cpu", tile=tile,
                                 jobs_dir=os.path.join(work, "jobs"), threads=2))
        engine.start()
        try:
            reference = engine.upscale(decode(source, 16_000_000)[0], name, timeout=600)
        finally:
            engine.stop()
    got = decode(answer, 256_000_000)[0]
    result = {"reference_shape": list(reference.shape), "answer_shape": list(got.shape),
              "reference_mean": float(reference.mean()), "reference_std": float(reference.std()),
              "answer_mean": float(got.mean()), "answer_std": float(got.std())}
    if reference.shape == got.shape:
        diff = np.abs(reference.astype(np.int32) - got.astype(np.int32))
        mse = float((diff.astype(np.float64) ** 2).mean())
        result["max_abs_diff"] = int(diff.max())
        result["psnr_db"] = float("inf") if mse == 0 else 10 * float(np.log10(255.0 ** 2 / mse))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the .pth file the service loaded")
    parser.add_argument("--tile", type=int, required=True, help="the service's KBXY_UPSCALE_TILE")
    parser.add_argument("source", help="the PNG that was sent")
    parser.add_argument("answer", help="the image the service answered")
    args = parser.parse_args(argv)
    with open(args.source, "rb") as src, open(args.answer, "rb") as ans:
        result = compare(args.model, args.tile, src.read(), ans.read())
    result["psnr_db"] = "inf" if result.get("psnr_db") == float("inf") else result.get("psnr_db")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
