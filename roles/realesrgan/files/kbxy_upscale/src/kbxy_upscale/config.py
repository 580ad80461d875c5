"""Settings, read only from environment variables (the role writes them to an env file)."""
import dataclasses
import json
import os
import sys


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


def _int(env, name, default, low, high=None):
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < low or (high is not None and value > high):
        raise ConfigError(f"{name}={value} is outside [{low}, {high if high is not None else 'inf'}]")
    return value


def _float(env, name, default, low):
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value > low:
        raise ConfigError(f"{name}={value} must be greater than {low}")
    return value


def _bool(env, name, default):
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (1/0)")


@dataclasses.dataclass(frozen=True)
class Settings:  # pylint: disable=too-many-instance-attributes
    """The service configuration. ``from_env`` is the only constructor used in production."""

    models_dir: str
    device: str = "auto"
    allow_cpu: bool = False
    queue_size: int = 8
    timeout: float = 120.0
    tile: int = 256
    max_pixels: int = 16_000_000
    jobs_dir: str = "/var/lib/kbxy-upscale/jobs"
    job_ttl: float = 3600.0
    # Not in the role's contract; defaults are right for production, tests set them.
    max_batch: int = 0  # 0: 8 on CUDA, 1 on the CPU (a batch changes fp32 rounding there)
    threads: int = 0  # torch intra-op threads on the CPU, 0 = torch's default
    # CPU: run the networks in channels_last (NHWC). About 1.5-2x faster with oneDNN, but the
    # fp32 sums come in another order, so a few pixels may differ from RealESRGANer by 1 LSB
    # (tests bound it: <= 2 LSB, PSNR >= 45 dB, like fp16). Off: byte-identical. CUDA: always on.
    cpu_channels_last: bool = False
    max_outscale: float = 16.0

    @classmethod
    def from_env(cls, env=None):
        """Build from ``env`` (default ``os.environ``); raise ConfigError naming the variable."""
        env = os.environ if env is None else env
        models_dir = env.get("KBXY_UPSCALE_MODELS_DIR", "").strip()
        if not models_dir:
            raise ConfigError("KBXY_UPSCALE_MODELS_DIR is required (a directory of *.pth weights)")
        device = env.get("KBXY_UPSCALE_DEVICE", "auto").strip().lower() or "auto"
        if device not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"KBXY_UPSCALE_DEVICE={device!r} must be auto, cuda or cpu")
        tile = _int(env, "KBXY_UPSCALE_TILE", 256, 0)
        if 0 < tile < 32:
            raise ConfigError(f"KBXY_UPSCALE_TILE={tile} must be 0 (no tiling) or at least 32")
        return cls(
            models_dir=models_dir,
            device=device,
            allow_cpu=_bool(env, "KBXY_UPSCALE_ALLOW_CPU", False),
            queue_size=_int(env, "KBXY_UPSCALE_QUEUE_SIZE", 8, 1),
            timeout=_float(env, "KBXY_UPSCALE_TIMEOUT", 120.0, 0.0),
            tile=tile,
            max_pixels=_int(env, "KBXY_UPSCALE_MAX_PIXELS", 16_000_000, 1),
            jobs_dir=env.get("KBXY_UPSCALE_JOBS_DIR", "").strip() or "/var/lib/kbxy-upscale/jobs",
            job_ttl=_float(env, "KBXY_UPSCALE_JOB_TTL", 3600.0, 0.0),
            max_batch=_int(env, "KBXY_UPSCALE_MAX_BATCH", 0, 0, 64),
            threads=_int(env, "KBXY_UPSCALE_THREADS", 0, 0, 1024),
            cpu_channels_last=_bool(env, "KBXY_UPSCALE_CPU_CHANNELS_LAST", False),
        )


def main(argv=None):
    """``kbxy-upscale-check``: validate the environment and the models, print them as JSON."""
    del argv
    try:
        settings = Settings.from_env()
        from .engine import Engine  # pylint: disable=import-outside-toplevel

        engine = Engine(settings)
    except (ConfigError, RuntimeError, OSError) as exc:
        print(f"kbxy-upscale: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"device": engine.device.type, "models": engine.describe_models()}, indent=1))
    return 0
