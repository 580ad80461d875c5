"""Models, the tiling pipeline and the one worker thread that owns the models.

The arithmetic around the network copies ``realesrgan.RealESRGANer.enhance`` step by step
(same float32 normalisation, pre-pad of 10 px and mod-pad by reflection, the same colour
and alpha handling, the same rounding and the same Lanczos resize), so an untiled fp32
result is byte-identical to the reference on the same weights; the tests prove it.

Threads: the HTTP side decodes and prepares a request (``Job``) in a thread pool and hands
it to ``Engine.submit``; the worker thread alone runs the models, taking tiles of the same
shape from every queued request into one batch and writing each output tile only into the
accumulator of the request that tile came from. Finishing (crop, clamp, 8/16-bit, resize,
encode) runs back in the thread pool, off the worker.
"""
import collections
import concurrent.futures
import logging
import math
import os
import threading
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F

LOG = logging.getLogger("kbxy_upscale")
PRE_PAD = 10  # RealESRGANer's default pre_pad
MIN_TILE = 32


class QueueFull(Exception):
    """Admission refused: the bounded queue is full."""

    def __init__(self, retry_after):
        super().__init__(f"queue full, retry after {retry_after} s")
        self.retry_after = retry_after


class JobFailed(Exception):
    """The worker could not process a request (the message is safe to return)."""


class LoadedModel:  # pylint: disable=too-few-public-methods
    """One checkpoint loaded through spandrel: fp32 module, and an fp16 copy on CUDA."""

    def __init__(self, name, path, device, use_half, channels_last=False):  # pylint: disable=too-many-arguments
        import spandrel  # pylint: disable=import-outside-toplevel

        try:
            descriptor = spandrel.ModelLoader(device="cpu").load_from_file(path)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            raise RuntimeError(f"{path}: cannot load the model: {type(exc).__name__}: {exc}") from exc
        if not isinstance(descriptor, spandrel.ImageModelDescriptor):
            raise RuntimeError(f"{path}: not an image-to-image model")
        if descriptor.input_channels != 3 or descriptor.output_channels != 3:
            raise RuntimeError(f"{path}: expected a 3-channel model, got {descriptor.input_channels}->{descriptor.output_channels}")
        self.name = name
        self.path = path
        self.arch = descriptor.architecture.name
        self.scale = int(descriptor.scale)
        # RealESRGANer's mod_scale: x2 RRDB unshuffles by 2, x1 by 4.
        self.mod = {2: 2, 1: 4}.get(self.scale, 1)
        model = descriptor.model.eval().to(device)
        for param in model.parameters():
            param.requires_grad_(False)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        # CPU fp32: the same kernels without the layout round trips, where that is exact.
        self.fp32 = model if channels_last or device.type != "cpu" else cpu_fast_exact(name, model)
        self.fp16 = None
        if use_half and descriptor.supports_half:
            import copy  # pylint: disable=import-outside-toplevel

            self.fp16 = copy.deepcopy(model).half()
        self.params = sum(p.numel() for p in model.parameters())


def _dense_conv_uses_onednn(x, conv):
    """Mirror of ATen's ``use_mkldnn`` choice for an fp32 CPU Conv2d (torch 2.14): whether the
    plain NCHW call would run oneDNN. Where it would not (small inputs), neither do we."""
    batch, channels, height, width = x.shape
    kh, kw = conv.kernel_size
    if (kh, kw) == (1, 1) and conv.stride == (1, 1) and conv.dilation == (1, 1) and batch < 16 and torch.get_num_threads() == 1:
        return False
    return conv.groups > 1 or (kh > 3 and kw > 3) or batch > 1 or channels * height * width > 20480


class BlockedCompact(torch.nn.Module):
    """SRVGGNetCompact on the CPU, same arithmetic, fewer copies.

    Called on NCHW tensors, every convolution reorders its input, weights and output between
    NCHW and oneDNN's blocked layout (about half the time of general-x4v3 in a oneDNN verbose profile).
    Here the activations stay blocked (``to_mkldnn``) from one convolution to the next and the
    weights are reordered once: oneDNN runs the same kernels on the same values, so the output
    is bit-identical (``LoadedModel`` checks it on a probe before using this, and the tests and
    the benchmark compare with RealESRGANer). PReLU works on either layout, exactly.
    """

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.packed = {}
        for index, layer in enumerate(net.body):
            if isinstance(layer, torch.nn.Conv2d):
                self.packed[index] = torch._C._nn.mkldnn_reorder_conv2d_weight(  # pylint: disable=protected-access
                    layer.weight.detach().to_mkldnn(), list(layer.padding), list(layer.stride), list(layer.dilation), layer.groups)

    @staticmethod
    def supports(net):
        body = getattr(net, "body", None)
        return (type(net).__name__ == "SRVGGNetCompact" and isinstance(body, torch.nn.ModuleList)
                and all(isinstance(layer, (torch.nn.Conv2d, torch.nn.PReLU)) for layer in body)
                and all(layer.padding_mode == "zeros" for layer in body if isinstance(layer, torch.nn.Conv2d)))

    def forward(self, x):
        out = x
        for index, layer in enumerate(self.net.body):
            if isinstance(layer, torch.nn.PReLU):
                out = F.prelu(out, layer.weight)
            elif _dense_conv_uses_onednn(out, layer):
                out = torch.mkldnn_convolution(out if out.is_mkldnn else out.contiguous().to_mkldnn(), self.packed[index], layer.bias,
                                               list(layer.padding), list(layer.stride), list(layer.dilation), layer.groups)
            else:
                out = layer(out.to_dense() if out.is_mkldnn else out)
        out = self.net.upsampler(out.to_dense() if out.is_mkldnn else out)
        out += F.interpolate(x, scale_factor=self.net.upscale, mode="nearest")
        return out


class PackedConv2d(torch.nn.Module):
    """A Conv2d whose weights are reordered into oneDNN's layout once instead of on every call.

    Input and output stay NCHW, so it fits any network (the RRDB ones concatenate and use
    LeakyReLU, which oneDNN-layout tensors do not support); same kernel, same values.
    """

    def __init__(self, conv):
        super().__init__()
        self.conv = conv
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self.packed = torch._C._nn.mkldnn_reorder_conv2d_weight(conv.weight.detach().to_mkldnn(), *self.args)  # pylint: disable=protected-access

    def forward(self, x):
        if _dense_conv_uses_onednn(x, self.conv):
            return torch.mkldnn_convolution(x.contiguous(), self.packed, self.conv.bias, *self.args)
        return self.conv(x)


def _conv_and_slope(layer):
    """(conv, LeakyReLU slope or None) of a spandrel ``conv_block``: a conv, or conv + LeakyReLU."""
    if isinstance(layer, (PackedConv2d, torch.nn.Conv2d)):
        return layer, None
    if isinstance(layer, torch.nn.Sequential) and len(layer) == 1 and isinstance(layer[0], (PackedConv2d, torch.nn.Conv2d)):
        return layer[0], None
    if (isinstance(layer, torch.nn.Sequential) and len(layer) == 2 and isinstance(layer[0], (PackedConv2d, torch.nn.Conv2d))
            and type(layer[1]) is torch.nn.LeakyReLU):  # pylint: disable=unidiomatic-typecheck
        return layer[0], layer[1].negative_slope
    return None, None


def _conv_channels(conv):
    plain = conv.conv if isinstance(conv, PackedConv2d) else conv
    return plain.in_channels, plain.out_channels


class DenseBlockInPlace(torch.nn.Module):
    """spandrel's ``ResidualDenseBlock_5C`` (RRDB networks: x4plus, x2plus, anime_6B) without its copies.

    The block feeds ``cat(x, x1, .., xk)`` to each of its five convolutions: four concatenations
    that copy up to 192 channels each, about 3.5 GB of fresh memory per x4plus call at 148 px.
    Here the features are written once into one buffer, ``x`` and then each activation straight
    into its channels (``leaky_relu(out=...)``), and each convolution reads a prefix of it: with
    a batch of 1 that prefix is a contiguous tensor, the very input ``torch.cat`` would have
    made, so the same kernels see the same values and the output is bit-identical. The buffer
    is shared by every block of one forward pass (``BufferPool``).
    """

    def __init__(self, block, pool):
        super().__init__()
        self.convs = torch.nn.ModuleList()
        self.slopes = []
        for index in range(1, 5):
            conv, slope = _conv_and_slope(getattr(block, f"conv{index}"))
            self.convs.append(conv)
            self.slopes.append(slope)
        self.conv5, last_slope = _conv_and_slope(block.conv5)
        self.features, self.growth = _conv_channels(self.convs[0])
        self.pool = pool
        if last_slope is not None or None in self.slopes:
            raise TypeError("not a CNA dense block")

    @staticmethod
    def supports(block):
        if type(block).__name__ != "ResidualDenseBlock_5C" or getattr(block, "conv1x1", None) is not None:
            return False
        convs = [_conv_and_slope(getattr(block, f"conv{index}", None)) for index in range(1, 6)]
        if any(conv is None for conv, _slope in convs) or convs[4][1] is not None or any(slope is None for _conv, slope in convs[:4]):
            return False
        features, growth = _conv_channels(convs[0][0])
        return all(_conv_channels(conv) == (features + index * growth, growth) for index, (conv, _slope) in enumerate(convs[:4])) \
            and _conv_channels(convs[4][0]) == (features + 4 * growth, features)

    def forward(self, x):
        batch, channels, height, width = x.shape
        if batch != 1:  # a prefix of the buffer would not be contiguous: the block's own arithmetic
            features = [x]
            for conv, slope in zip(self.convs, self.slopes):
                features.append(F.leaky_relu(conv(torch.cat(features, 1)), slope))
            return self.conv5(torch.cat(features, 1)) * 0.2 + x
        buffer = self.pool.get((batch, self.features + 4 * self.growth, height, width), x)
        buffer[:, :channels].copy_(x)
        for index, (conv, slope) in enumerate(zip(self.convs, self.slopes)):
            width_in = channels + index * self.growth
            torch._C._nn.leaky_relu(conv(buffer[:, :width_in]), slope, out=buffer[:, width_in:width_in + self.growth])  # pylint: disable=protected-access
        return self.conv5(buffer).mul_(0.2).add_(x)


class BufferPool:
    """One scratch tensor reused by every dense block of a forward pass (the worker thread's)."""

    def __init__(self):
        self.local = threading.local()

    def get(self, shape, like):
        buffer = getattr(self.local, "buffer", None)
        if buffer is None or buffer.shape != shape or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = torch.empty(shape, dtype=like.dtype, device=like.device)
            self.local.buffer = buffer
        return buffer

    def clear(self):
        self.local.buffer = None


class ResidualInPlace(torch.nn.Module):
    """spandrel's ``RRDB``: three dense blocks, then ``out * 0.2 + x`` in place (same two roundings)."""

    def __init__(self, block):
        super().__init__()
        self.blocks = torch.nn.ModuleList([block.RDB1, block.RDB2, block.RDB3])

    def forward(self, x):
        out = x
        for block in self.blocks:
            out = block(out)
        return out.mul_(0.2).add_(x)


class PooledNet(torch.nn.Module):
    """The network, dropping the dense blocks' scratch buffer after each call."""

    def __init__(self, net, pool):
        super().__init__()
        self.net = net
        self.pool = pool

    def forward(self, x):
        try:
            return self.net(x)
        finally:
            self.pool.clear()


def _packed_convs(model):
    """A copy of ``model`` with every zero-padded Conv2d replaced by a ``PackedConv2d``, and
    RRDB networks' dense blocks by ``DenseBlockInPlace`` (batch 1; others use the plain model)."""
    import copy  # pylint: disable=import-outside-toplevel

    packed = copy.deepcopy(model)
    for parent in list(packed.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is torch.nn.Conv2d and child.padding_mode == "zeros" and isinstance(child.padding, tuple):  # pylint: disable=unidiomatic-typecheck
                setattr(parent, child_name, PackedConv2d(child))
    pool = BufferPool()
    dense = 0
    for parent in list(packed.modules()):
        for child_name, child in list(parent.named_children()):
            if DenseBlockInPlace.supports(child):
                setattr(parent, child_name, DenseBlockInPlace(child, pool))
                dense += 1
    if not dense:
        return packed
    for parent in list(packed.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child).__name__ == "RRDB" and all(isinstance(getattr(child, f"RDB{i}", None), DenseBlockInPlace) for i in (1, 2, 3)):
                setattr(parent, child_name, ResidualInPlace(child))
    return PooledNet(packed, pool)


def cpu_fast_exact(name, model):
    """The fastest CPU fp32 form of ``model`` that is bit-identical to it on a probe.

    SRVGG (general-x4v3, animevideov3): ``BlockedCompact``; others: ``PackedConv2d`` inside.
    Anything that fails or differs falls back to the plain module (with a warning).
    """
    if not torch.backends.mkldnn.is_available():
        return model
    try:
        fast = BlockedCompact(model) if BlockedCompact.supports(model) else _packed_convs(model)
        probe = torch.rand((1, 3, 24, 24), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            exact = torch.equal(fast(probe), model(probe))
    except (RuntimeError, TypeError) as exc:
        LOG.warning("%s: oneDNN prepacking unavailable (%s): plain NCHW", name, exc)
        return model
    if not exact:
        LOG.warning("%s: oneDNN prepacking is not bit-identical here: plain NCHW", name)
        return model
    return fast


def tile_starts(length, tile, overlap, mod):
    """Start offsets of tiles of size ``tile`` covering ``length`` with >= ``overlap`` overlap."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    starts = []
    for i in range(count):
        start = round(i * (length - tile) / (count - 1))
        starts.append(min(length - tile, start - start % mod))
    return sorted(set(starts))


def _ramp(n, lo_interior, hi_interior, ramp):
    """1-D blending weight: 0 for the outer quarter of an interior overlap, then linear to 1."""
    pos = torch.arange(n, dtype=torch.float32) + 0.5
    weight = torch.ones(n)
    if lo_interior:
        weight = torch.minimum(weight, ((pos - ramp / 4) / (ramp / 2)).clamp(0, 1))
    if hi_interior:
        weight = torch.minimum(weight, ((n - pos - ramp / 4) / (ramp / 2)).clamp(0, 1))
    return weight


class Plane:
    """One image fed to the network (the colour image, or the alpha as grey) and its output."""

    def __init__(self, tensor):
        self.x = tensor  # (1, 3, Hp, Wp) float32 after pre-pad and mod-pad
        self.out = None
        self.wsum = None
        self.tiles = []


class Tile:  # pylint: disable=too-few-public-methods
    """A piece of a plane: where it is, and the blending weight of its output."""

    def __init__(self, job, plane, y, x, h, w, weight):
        self.job, self.plane, self.y, self.x, self.h, self.w, self.weight = job, plane, y, x, h, w, weight

    def key(self):
        return (self.job.model.name, self.h, self.w)

    def input(self):
        return self.plane.x[:, :, self.y:self.y + self.h, self.x:self.x + self.w]


class Job:  # pylint: disable=too-many-instance-attributes
    """One request's image on its way through the worker."""

    def __init__(self, array, model, outscale, tile, deadline=None, overlap=0):  # pylint: disable=too-many-arguments
        self.model = model
        self.overlap = overlap
        self.outscale = outscale
        self.deadline = deadline
        self.future = concurrent.futures.Future()
        self.cancelled = False
        self.height, self.width = array.shape[:2]
        self.dtype = array.dtype
        self.max_range = 65535 if array.dtype == np.uint16 else 255
        img = array.astype(np.float32)
        img = img / self.max_range
        self.alpha_opaque = False
        alpha = None
        if img.ndim == 2:
            self.mode = "L"
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        elif img.shape[2] == 4:
            self.mode = "RGBA"
            alpha = img[:, :, 3]
            img = cv2.cvtColor(img[:, :, 0:3], cv2.COLOR_BGR2RGB)
            # Deliberate difference from the reference: a fully opaque alpha stays exactly
            # opaque and costs no second pass through the network.
            self.alpha_opaque = bool(array[:, :, 3].min() == self.max_range)
            alpha = None if self.alpha_opaque else cv2.cvtColor(alpha, cv2.COLOR_GRAY2RGB)
        else:
            self.mode = "RGB"
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        self.planes = [Plane(self._pad(img))]
        if alpha is not None:
            self.planes.append(Plane(self._pad(alpha)))
        self.pending = collections.deque()
        self.tile = tile
        self.megapixels = self.height * self.width / 1e6
        self.split(tile)

    def _pad(self, img):
        tensor = torch.from_numpy(np.transpose(img, (2, 0, 1))).float().unsqueeze(0)
        pre_pad = min(PRE_PAD, self.height - 1, self.width - 1)
        if pre_pad > 0:
            tensor = F.pad(tensor, (0, pre_pad, 0, pre_pad), "reflect")
        mod = self.model.mod
        h, w = tensor.shape[2:]
        pad_h, pad_w = (mod - h % mod) % mod, (mod - w % mod) % mod
        if pad_h or pad_w:
            tensor = F.pad(tensor, (0, pad_w, 0, pad_h), "reflect" if max(pad_h, pad_w) < min(h, w) else "replicate")
        return tensor

    def split(self, tile):
        """(Re)build the tile list with tiles of at most ``tile`` px (0: one tile per plane)."""
        self.tile = tile
        self.pending.clear()
        scale, mod = self.model.scale, self.model.mod
        for plane in self.planes:
            hp, wp = plane.x.shape[2:]
            plane.out = plane.wsum = None
            plane.tiles = []
            size = tile - tile % mod if tile else 0
            if not size or (hp <= size and wp <= size):
                plane.tiles.append(Tile(self, plane, 0, 0, hp, wp, None))
            else:
                overlap = (self.overlap or max(8, min(32, size // 2 - 2 * mod))) + mod
                th, tw = min(size, hp), min(size, wp)
                ys, xs = tile_starts(hp, th, overlap, mod), tile_starts(wp, tw, overlap, mod)
                ramp = (overlap - mod) * scale
                for y in ys:
                    wy = _ramp(th * scale, y > 0, y + th < hp, ramp)
                    for x in xs:
                        wx = _ramp(tw * scale, x > 0, x + tw < wp, ramp)
                        plane.tiles.append(Tile(self, plane, y, x, th, tw, (wy[:, None] * wx[None, :])[None, None]))
            self.pending.extend(plane.tiles)
        self.remaining = sum(len(p.tiles) for p in self.planes)

    def deliver(self, tile, output):
        """Put one output tile (1, 3, h*s, w*s) into this job's own accumulator."""
        plane = tile.plane
        if tile.weight is None:
            plane.out = output
        else:
            scale = self.model.scale
            if plane.out is None:
                hp, wp = plane.x.shape[2:]
                plane.out = torch.zeros((1, 3, hp * scale, wp * scale), device=output.device)
                plane.wsum = torch.zeros((1, 1, hp * scale, wp * scale), device=output.device)
            weight = tile.weight.to(output.device)
            ys, xs = slice(tile.y * scale, (tile.y + tile.h) * scale), slice(tile.x * scale, (tile.x + tile.w) * scale)
            plane.out[:, :, ys, xs] += output * weight
            plane.wsum[:, :, ys, xs] += weight
        self.remaining -= 1

    def finish(self):
        """Crop, clamp and convert like RealESRGANer.enhance; runs off the worker thread."""
        scale = self.model.scale
        h, w = self.height * scale, self.width * scale

        def plane_image(plane):
            out = plane.out if plane.wsum is None else plane.out / plane.wsum
            with torch.inference_mode():
                out = out[:, :, 0:h, 0:w]
                out = out.data.squeeze().float().cpu().clamp_(0, 1).numpy()
            return np.transpose(out[[2, 1, 0], :, :], (1, 2, 0))

        output_img = plane_image(self.planes[0])
        if self.mode == "L":
            output_img = cv2.cvtColor(output_img, cv2.COLOR_BGR2GRAY)
        if self.mode == "RGBA":
            output_img = cv2.cvtColor(output_img, cv2.COLOR_BGR2BGRA)
            if self.alpha_opaque:
                output_img[:, :, 3] = 1.0
            else:
                output_img[:, :, 3] = cv2.cvtColor(plane_image(self.planes[1]), cv2.COLOR_BGR2GRAY)
        if self.max_range == 65535:
            output = (output_img * 65535.0).round().astype(np.uint16)
        else:
            output = (output_img * 255.0).round().astype(np.uint8)
        if self.outscale is not None and self.outscale != float(scale):
            size = (int(self.width * self.outscale), int(self.height * self.outscale))
            output = cv2.resize(output, size, interpolation=cv2.INTER_LANCZOS4)
        return output


def pick_device(settings):
    """auto -> cuda when available; cuda without a GPU fails unless CPU fall-back is allowed."""
    has_cuda = torch.cuda.is_available()
    if settings.device == "cpu" or (settings.device == "auto" and not has_cuda):
        return torch.device("cpu")
    if has_cuda:
        return torch.device("cuda")
    if settings.allow_cpu:
        LOG.warning("KBXY_UPSCALE_DEVICE=cuda but no CUDA device is usable: falling back to the CPU (KBXY_UPSCALE_ALLOW_CPU=1)")
        return torch.device("cpu")
    raise RuntimeError("KBXY_UPSCALE_DEVICE=cuda but no CUDA device is usable; set KBXY_UPSCALE_ALLOW_CPU=1 to run on the CPU")


class Engine:  # pylint: disable=too-many-instance-attributes
    """Owns the models and the worker thread; thread-safe ``submit``."""

    def __init__(self, settings):
        self.settings = settings
        self.device = pick_device(settings)
        if self.device.type == "cpu" and settings.threads:
            torch.set_num_threads(settings.threads)
        self.half = self.device.type == "cuda"
        self.max_batch = settings.max_batch or (8 if self.device.type == "cuda" else 1)
        # NHWC: always on CUDA; on the CPU only when asked, because oneDNN's NHWC kernels sum
        # in another order than the NCHW path RealESRGANer takes (faster, but not byte-identical).
        self.channels_last = self.device.type == "cuda" or settings.cpu_channels_last
        self.models = {}
        if not os.path.isdir(settings.models_dir):
            raise RuntimeError(f"KBXY_UPSCALE_MODELS_DIR={settings.models_dir} is not a directory")
        for entry in sorted(os.listdir(settings.models_dir)):
            if entry.endswith(".pth") and not entry.startswith("."):
                name = entry[:-4]
                path = os.path.join(settings.models_dir, entry)
                self.models[name] = LoadedModel(name, path, self.device, self.half, self.channels_last)
        if not self.models:
            raise RuntimeError(f"no *.pth model in KBXY_UPSCALE_MODELS_DIR={settings.models_dir}")
        self._cond = threading.Condition()
        self._active = []  # admitted jobs, oldest first
        self._stop = False
        self._thread = None
        self.ready = False
        self.stats = collections.Counter()
        self.busy_seconds = 0.0
        self.seconds_per_job = 1.0

    # ---------------------------------------------------------------- lifecycle
    def start(self):
        self._thread = threading.Thread(target=self._run, name="kbxy-upscale-worker", daemon=True)
        self._thread.start()

    def warm_up(self):
        """One small request per model through the whole path; then ready."""
        for name in self.models:
            self.upscale(np.full((16, 16, 3), 128, np.uint8), name, timeout=600)
        self.ready = True

    def stop(self):
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def describe_models(self):
        return {m.name: {"arch": m.arch, "scale": m.scale, "params": m.params} for m in self.models.values()}

    def upscale(self, array, model, outscale=None, tile=None, timeout=None):
        """Synchronous helper (tests, benchmark, warm-up): array in, array out, via the worker."""
        job = Job(array, self.models[model], outscale, self.settings.tile if tile is None else tile,
                  None if timeout is None else time.monotonic() + timeout)
        self.submit(job)
        job.future.result(timeout=timeout)
        return job.finish()

    def queue_depth(self):
        with self._cond:
            return len(self._active)

    # ---------------------------------------------------------------- admission
    def submit(self, job):
        """Admit ``job`` or raise QueueFull; the worker completes ``job.future``."""
        with self._cond:
            if len(self._active) >= self.settings.queue_size:
                self.stats["rejected_queue_full"] += 1
                raise QueueFull(max(1, math.ceil(self.seconds_per_job * len(self._active))))
            self._active.append(job)
            self._cond.notify_all()
        return job.future

    def cancel(self, job):
        with self._cond:
            job.cancelled = True
            self._cond.notify_all()

    # ---------------------------------------------------------------- worker
    def _next_batch(self):
        """Under the lock: drop finished/cancelled/expired jobs, gather one same-shape batch."""
        now = time.monotonic()
        for job in list(self._active):
            if job.cancelled or job.future.cancelled() or (job.deadline is not None and now > job.deadline):
                self._active.remove(job)
                if not job.future.done():
                    job.future.set_exception(TimeoutError("request timed out"))
        if not self._active:
            return None
        first = next((job for job in self._active if job.pending), None)
        if first is None:
            return None
        key = first.pending[0].key()
        batch = []
        for job in self._active:
            for tile in job.pending:
                if len(batch) == self.max_batch:
                    return batch
                if tile.key() == key:
                    batch.append(tile)
        return batch

    def _run(self):
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while not self._stop and not self._active:
                    self._cond.wait()
                if self._stop:
                    for job in self._active:
                        if not job.future.done():
                            job.future.set_exception(JobFailed("service is shutting down"))
                    self._active.clear()
                    return
                batch = self._next_batch()
            if not batch:
                with self._cond:
                    self._cond.wait(0.05)
                continue
            started = time.monotonic()
            try:
                self._process(batch)
            except Exception as exc:  # pylint: disable=broad-exception-caught
                LOG.exception("worker: batch failed")
                self.stats["errors_worker"] += 1
                self._fail({t.job for t in batch}, JobFailed(f"processing failed: {type(exc).__name__}"))
            self.busy_seconds += time.monotonic() - started
            with self._cond:
                for job in {t.job for t in batch}:
                    if job.remaining == 0 and job in self._active:
                        self._active.remove(job)
                        self.stats["megapixels"] += job.megapixels
                        self.seconds_per_job = 0.8 * self.seconds_per_job + 0.2 * (time.monotonic() - job.started_at)
                        if not job.future.done():  # a timed-out request's future may be cancelled already
                            job.future.set_result(job)

    def _fail(self, jobs, exc):
        with self._cond:
            for job in jobs:
                if job in self._active:
                    self._active.remove(job)
                if not job.future.done():
                    job.future.set_exception(exc)

    def _process(self, batch):
        for tile in batch:
            if not hasattr(tile.job, "started_at"):
                tile.job.started_at = time.monotonic()
        model = batch[0].job.model
        self.stats["batches"] += 1
        self.stats["tiles"] += len(batch)
        try:
            outputs = self._forward(model, batch)
        except torch.cuda.OutOfMemoryError:
            self._on_oom(batch)
            return
        for tile, output in zip(batch, outputs):
            tile.job.pending.remove(tile)
            tile.job.deliver(tile, output)

    def _forward(self, model, batch):
        """Run one batch; fp16 on CUDA with an fp32 redo of any tile that came out NaN/black."""
        with torch.inference_mode():
            if len(batch) == 1:
                x = batch[0].input().to(self.device, non_blocking=True)
            else:
                x = torch.cat([t.input() for t in batch]).to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.half and model.fp16 is not None:
                out = model.fp16(x.half()).float()
                flat_in, flat_out = x.flatten(1), out.flatten(1)
                bad = ~torch.isfinite(flat_out).all(dim=1) | ((flat_out.amax(dim=1) < 1 / 255) & (flat_in.amax(dim=1) > 4 / 255))
                if bool(bad.any()):
                    self.stats["fp16_fallbacks"] += int(bad.sum())
                    index = bad.nonzero().flatten()
                    out[index] = model.fp32(x[index])
            else:
                out = model.fp32(x)
            return list(out.split(1))

    def _on_oom(self, batch):
        """CUDA out of memory: split the batch, then halve the tile size of its requests."""
        torch.cuda.empty_cache()
        self.stats["cuda_oom"] += 1
        if len(batch) > 1:
            self.max_batch = max(1, len(batch) // 2)
            LOG.warning("CUDA OOM with a batch of %d tiles: batches now at most %d", len(batch), self.max_batch)
            return
        job = batch[0].job
        current = job.tile or max(job.planes[0].x.shape[2:])
        new = (current // 2) - (current // 2) % job.model.mod
        if new < MIN_TILE:
            self._fail([job], JobFailed("out of GPU memory even at the smallest tile size"))
            return
        LOG.warning("CUDA OOM at tile %d: retrying the request with tile %d", current, new)
        job.split(new)
