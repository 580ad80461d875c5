"""The HTTP API. Run with ``uvicorn kbxy_upscale.app:create_app --factory``."""
import asyncio
import contextlib
import logging
import math
import time

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from . import imaging
from .config import Settings
from .engine import Engine, Job, JobFailed, QueueFull
from .jobs import JOB_ID, JobStore

LOG = logging.getLogger("kbxy_upscale")


class HTTPProblem(Exception):
    def __init__(self, status, detail, headers=None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def _problem(status, detail, headers=None):
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _read_body(request, limit):
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _image_and_params(request, limit):
    """The image bytes and the parameters, from a raw body or a multipart form."""
    params = dict(request.query_params)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise HTTPProblem(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
        form = await request.form()
        data = None
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                if data is None:
                    data = await value.read()
            else:
                params.setdefault(key, value)
        if data is None:
            raise HTTPProblem(400, "multipart body without a file field (send the image as field 'image')")
        if len(data) > limit:
            raise HTTPProblem(413, f"file exceeds the limit of {limit} bytes")
        return data, params
    return await _read_body(request, limit), params


def _parse(engine, params, accept):
    """Validate model, outscale, format and quality; raise HTTPProblem with a clear message."""
    names = sorted(engine.models)
    name = params.get("model")
    if not name:
        if len(names) != 1:
            raise HTTPProblem(422, f"model is required: one of {names}")
        name = names[0]
    if name not in engine.models:
        raise HTTPProblem(404, f"unknown model {name!r}; available: {names}")
    model = engine.models[name]
    outscale = None
    if params.get("outscale") not in (None, ""):
        try:
            outscale = float(params["outscale"])
        except ValueError:
            raise HTTPProblem(422, f"outscale={params['outscale']!r} is not a number") from None
        if not math.isfinite(outscale) or outscale <= 0 or outscale > engine.settings.max_outscale:
            raise HTTPProblem(422, f"outscale={params['outscale']} must be > 0 and <= {engine.settings.max_outscale}")
    quality = None
    if params.get("quality") not in (None, ""):
        try:
            quality = int(params["quality"])
        except ValueError:
            raise HTTPProblem(422, f"quality={params['quality']!r} is not an integer") from None
        if not 1 <= quality <= 100:
            raise HTTPProblem(422, f"quality={quality} must be between 1 and 100")
    try:
        fmt = imaging.negotiate(params.get("format"), accept)
    except imaging.ImageError as exc:
        raise HTTPProblem(exc.status, exc.message) from None
    return model, outscale, fmt, quality


def _prepare(engine, data, model, outscale):
    array, _fmt = imaging.decode(data, engine.settings.max_pixels)
    height, width = array.shape[:2]
    factor = outscale if outscale is not None else model.scale
    if int(width * factor) < 1 or int(height * factor) < 1:
        raise imaging.ImageError(422, f"outscale={outscale} makes a {width}x{height} image empty")
    return array


def _finish(job, fmt, quality):
    output = job.finish()
    data, media_type = imaging.encode(output, fmt, quality)
    return data, media_type, output.shape[1], output.shape[0]


def create_app(settings=None):  # pylint: disable=too-many-statements
    """App factory (``uvicorn --factory``); ``settings`` defaults to the environment."""
    settings = settings or Settings.from_env()
    state = {}
    body_limit = settings.max_pixels * 8 + (1 << 20)  # 16-bit RGBA, uncompressed, + headers

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        engine = await run_in_threadpool(Engine, settings)
        engine.start()
        state["engine"] = engine
        state["jobs"] = JobStore(settings.jobs_dir, settings.job_ttl)
        state["tasks"] = set()
        await run_in_threadpool(engine.warm_up)
        reaper = asyncio.create_task(_reap(state["jobs"], settings.job_ttl))
        LOG.info("kbxy-upscale ready on %s with models %s", engine.device, sorted(engine.models))
        try:
            yield
        finally:
            reaper.cancel()
            engine.stop()

    app = FastAPI(title="kbxy-upscale", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(HTTPProblem)
    async def _problem_handler(_request, exc):
        state["engine"].stats[f"http_{exc.status}"] += 1
        return _problem(exc.status, exc.detail, exc.headers)

    async def run(data, params, accept, timeout):
        """Decode, queue, wait, finish: returns (bytes, media type, width, height)."""
        engine = state["engine"]
        model, outscale, fmt, quality = _parse(engine, params, accept)
        try:
            array = await run_in_threadpool(_prepare, engine, data, model, outscale)
            job = await run_in_threadpool(Job, array, model, outscale, settings.tile,
                                          None if timeout is None else time.monotonic() + timeout)
            del array
            future = engine.submit(job)
            try:
                await asyncio.wait_for(asyncio.wrap_future(future), timeout)
            except (asyncio.TimeoutError, TimeoutError):
                engine.cancel(job)
                raise HTTPProblem(504, f"the request did not finish within {timeout} s") from None
            return await run_in_threadpool(_finish, job, fmt, quality)
        except imaging.ImageError as exc:
            raise HTTPProblem(exc.status, exc.message) from None
        except QueueFull as exc:
            raise HTTPProblem(429, "the queue is full; retry later", {"Retry-After": str(exc.retry_after)}) from None
        except JobFailed as exc:
            raise HTTPProblem(503, str(exc)) from None

    @app.post("/v1/upscale")
    async def upscale(request: Request):
        data, params = await _image_and_params(request, body_limit)
        body, media_type, width, height = await run(data, params, request.headers.get("accept"), settings.timeout)
        state["engine"].stats["http_200"] += 1
        return Response(body, media_type=media_type, headers={"X-Image-Size": f"{width}x{height}"})

    @app.post("/v1/jobs", status_code=202)
    async def create_job(request: Request):
        data, params = await _image_and_params(request, body_limit)
        accept = request.headers.get("accept")
        if accept and "json" in accept:
            accept = None  # the client wants JSON now; the result's format comes from ?format=
        _parse(state["engine"], params, accept)  # fail fast on bad parameters
        imaging_error = None
        try:
            await run_in_threadpool(imaging.probe, data, settings.max_pixels)
        except imaging.ImageError as exc:
            imaging_error = exc
        if imaging_error:
            raise HTTPProblem(imaging_error.status, imaging_error.message)
        if state["engine"].queue_depth() >= settings.queue_size:
            raise HTTPProblem(429, "the queue is full; retry later", {"Retry-After": str(max(1, math.ceil(state["engine"].seconds_per_job)))})
        store = state["jobs"]
        job_id = store.create({k: v for k, v in params.items() if k in ("model", "outscale", "format", "quality")})

        async def work():
            store.update(job_id, status="running")
            try:
                body, media_type, width, height = await run(data, params, accept, None)
                await run_in_threadpool(store.finish, job_id, body, media_type, width, height)
            except HTTPProblem as exc:
                store.fail(job_id, exc.status, exc.detail)
            except Exception as exc:  # pylint: disable=broad-exception-caught
                LOG.exception("job %s failed", job_id)
                store.fail(job_id, 500, f"{type(exc).__name__}")

        task = asyncio.create_task(work())
        state["tasks"].add(task)
        task.add_done_callback(state["tasks"].discard)
        url = f"/v1/jobs/{job_id}"
        return JSONResponse({"id": job_id, "status": "queued", "status_url": url, "result_url": url + "/result"},
                            status_code=202, headers={"Location": url})

    def _lookup(job_id):
        if not JOB_ID.match(job_id):
            raise HTTPProblem(404, "no such job")
        meta = state["jobs"].get(job_id)
        if meta == "expired":
            raise HTTPProblem(410, "the job's result has expired and was deleted")
        if meta is None:
            raise HTTPProblem(404, "no such job")
        return meta

    @app.get("/v1/jobs/{job_id}")
    async def job_status(job_id: str):
        meta = _lookup(job_id)
        meta["result_url"] = f"/v1/jobs/{job_id}/result" if meta["status"] == "done" else None
        return meta

    @app.get("/v1/jobs/{job_id}/result")
    async def job_result(job_id: str):
        meta = _lookup(job_id)
        if meta["status"] == "failed":
            raise HTTPProblem(409, f"the job failed: {meta['error']['detail']}")
        if meta["status"] != "done":
            raise HTTPProblem(409, f"the job is {meta['status']}; poll /v1/jobs/{job_id}")
        return FileResponse(state["jobs"].result_path(job_id), media_type=meta["media_type"])

    @app.get("/v1/health")
    async def health():
        engine = state["engine"]
        return {"status": "ok", "device": engine.device.type, "models": sorted(engine.models)}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        engine = state.get("engine")
        if engine is None or not engine.ready:
            return _problem(503, "warming up")
        return {"status": "ready"}

    @app.get("/v1/models")
    async def models():
        return state["engine"].describe_models()

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(_metrics(state["engine"]), media_type="text/plain; version=0.0.4")

    return app


async def _reap(store, ttl):
    interval = max(0.5, min(60.0, ttl / 4))
    while True:
        await asyncio.sleep(interval)
        await run_in_threadpool(store.expire)


def _metrics(engine):
    import torch  # pylint: disable=import-outside-toplevel

    stats = engine.stats
    lines = [
        "# HELP kbxy_upscale_queue_depth Requests admitted and not finished.",
        "# TYPE kbxy_upscale_queue_depth gauge",
        f"kbxy_upscale_queue_depth {engine.queue_depth()}",
        "# HELP kbxy_upscale_input_megapixels_total Input megapixels processed.",
        "# TYPE kbxy_upscale_input_megapixels_total counter",
        f"kbxy_upscale_input_megapixels_total {stats['megapixels']:.6f}",
        "# HELP kbxy_upscale_busy_seconds_total Seconds the worker spent running models.",
        "# TYPE kbxy_upscale_busy_seconds_total counter",
        f"kbxy_upscale_busy_seconds_total {engine.busy_seconds:.6f}",
        "# HELP kbxy_upscale_megapixels_per_second Input megapixels per busy second.",
        "# TYPE kbxy_upscale_megapixels_per_second gauge",
        f"kbxy_upscale_megapixels_per_second {stats['megapixels'] / engine.busy_seconds if engine.busy_seconds else 0:.6f}",
        "# HELP kbxy_upscale_responses_total Responses by HTTP status.",
        "# TYPE kbxy_upscale_responses_total counter",
    ]
    for key in sorted(k for k in stats if k.startswith("http_")):
        lines.append(f'kbxy_upscale_responses_total{{code="{key[5:]}"}} {stats[key]}')
    lines += ["# HELP kbxy_upscale_events_total Worker events (fp16 fall-backs, CUDA OOM, errors, rejections).",
              "# TYPE kbxy_upscale_events_total counter"]
    for key in ("batches", "tiles", "fp16_fallbacks", "cuda_oom", "errors_worker", "rejected_queue_full"):
        lines.append(f'kbxy_upscale_events_total{{event="{key}"}} {stats[key]}')
    if engine.device.type == "cuda":
        lines += ["# HELP kbxy_upscale_gpu_memory_bytes GPU memory allocated by torch.", "# TYPE kbxy_upscale_gpu_memory_bytes gauge",
                  f"kbxy_upscale_gpu_memory_bytes {torch.cuda.memory_allocated()}",
                  f"kbxy_upscale_gpu_memory_peak_bytes {torch.cuda.max_memory_allocated()}"]
    return "\n".join(lines) + "\n"
