"""kbxy-upscale: a Real-ESRGAN upscaling service (FastAPI) for the kbxy.platform collection."""
__version__ = "0.1.0"
