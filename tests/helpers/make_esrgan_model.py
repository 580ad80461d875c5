"""Write a seeded random-weight Real-ESRGAN checkpoint in the official format.

    python tests/helpers/make_esrgan_model.py --arch general-x4v3 --seed 1 --out X.pth

The network is built with the reference's own architecture classes (basicsr's RRDBNet,
realesrgan's SRVGGNetCompact) with the official hyper-parameters of each released model,
so the state dict has exactly the keys and shapes of the published weights, and it is
saved as ``{"params_ema": state_dict}`` like the released ``.pth`` files. Only the
values are random (seeded, so the same seed gives the same file). The last convolution
is rescaled so the output spreads over [0, 1] instead of clamping to black: otherwise
an equivalence test would compare images of zeros. Needs torch (``.venv-esrgan``).
"""
import argparse
import os
import sys
import tempfile

import torch

# The official configuration of each released Real-ESRGAN model.
ARCHES = {
    "x4plus": ("rrdb", {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_block": 23, "num_grow_ch": 32, "scale": 4}),
    "x2plus": ("rrdb", {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_block": 23, "num_grow_ch": 32, "scale": 2}),
    "anime_6B": ("rrdb", {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_block": 6, "num_grow_ch": 32, "scale": 4}),
    "general-x4v3": ("srvgg", {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_conv": 32, "upscale": 4, "act_type": "prelu"}),
    "animevideov3": ("srvgg", {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_conv": 16, "upscale": 4, "act_type": "prelu"}),
}


def _reference_classes():
    """Import the reference architectures (basicsr needs the functional_tensor shim)."""
    import torchvision.transforms.functional as tv_functional  # pylint: disable=import-outside-toplevel

    sys.modules.setdefault("torchvision.transforms.functional_tensor", tv_functional)
    from basicsr.archs.rrdbnet_arch import RRDBNet  # pylint: disable=import-outside-toplevel
    from realesrgan.archs.srvgg_arch import SRVGGNetCompact  # pylint: disable=import-outside-toplevel

    return RRDBNet, SRVGGNetCompact


def build(arch, seed):
    """Return the seeded, calibrated network for ``arch`` (eval mode, fp32, CPU)."""
    kind, kwargs = ARCHES[arch]
    rrdb_cls, srvgg_cls = _reference_classes()
    torch.manual_seed(seed)
    net = rrdb_cls(**kwargs) if kind == "rrdb" else srvgg_cls(**kwargs)
    net.eval()
    last = net.conv_last if kind == "rrdb" else net.body[-1]
    # Calibrate the last convolution on a seeded probe so that the output is spread out:
    # RRDB output ~ 0.5 +- 0.2; SRVGG adds its output to the upsampled input, so +- 0.08.
    target_mean, target_std = (0.5, 0.2) if kind == "rrdb" else (0.0, 0.08)
    gen = torch.Generator().manual_seed(seed + 1000)
    probe = torch.rand(1, 3, 24, 24, generator=gen)
    captured = {}
    hook = last.register_forward_hook(lambda _m, _i, out: captured.setdefault("y", out.detach().clone()))
    with torch.inference_mode():
        net(probe)
    hook.remove()
    mean, std = captured["y"].mean().item(), captured["y"].std().item()
    factor = target_std / max(std, 1e-12)
    with torch.no_grad():
        last.weight.mul_(factor)
        last.bias.copy_((last.bias - mean) * factor + target_mean)
    return net


def write(arch, seed, out):
    """Save ``{"params_ema": state_dict}`` to ``out`` (temp file, fsync, rename)."""
    net = build(arch, seed)
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".model-", suffix=".pth", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"params_ema": state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        loaded = torch.load(tmp, map_location="cpu", weights_only=True)["params_ema"]
        if set(loaded) != set(state) or any(not torch.equal(loaded[k], state[k]) for k in state):
            raise RuntimeError(f"{tmp}: written checkpoint does not read back equal")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--arch", required=True, choices=sorted(ARCHES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="path of the .pth file to write")
    args = parser.parse_args(argv)
    print(write(args.arch, args.seed, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
