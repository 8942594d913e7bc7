"""`osum serve`: an HTTP server for a model (FastAPI + uvicorn).

    POST /v1/audio/transcriptions   OpenAI-compatible speech recognition (multipart: file, model, language,
                                    prompt, response_format json|text|srt|verbose_json|vtt, temperature)
    POST /v1/audio/understand       file + task tags (or a prompt) -> the structured result of `generate`
    GET  /health, GET /v1/models

Errors are JSON in OpenAI's shape {"error": {"message", "type", "param", "code"}} with the status saying
who is at fault: 400 bad request, 401 missing/wrong token, 413 upload or audio too long, 415 not audio,
422 missing field or unknown task tag, 500 a failure of the server (logged; the server keeps serving).
OpenAI's `prompt` (a vocabulary hint for Whisper) is accepted and ignored by /transcriptions: an osum
prompt is an instruction that selects the task; send one to /v1/audio/understand instead.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse

from ..audio import AudioError, audio_info
from ..infer import formats
from ..infer.api import SpeechModel
from ..infer.inputs import read_input
from ..tasks import UnknownTaskError, canonical_task
from .batcher import Batcher

log = logging.getLogger(__name__)

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")


@dataclass
class ServeSettings:
    model_name: str = "osum"
    api_key: str | None = None  # bearer token; None = no authentication
    max_upload_mb: float = 50.0
    max_audio_seconds: float = 1800.0  # longer audio is refused (413); long files are split within this
    max_batch: int = 16  # requests decoded together; 1 = no request batching
    batch_wait_ms: float = 10.0  # how long a request waits for others to join its batch


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class UploadLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413 before they are buffered."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, counted_receive, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        import json

        body = json.dumps(_error_body(413, f"upload larger than the server's limit of {self.limit / 1e6:.0f} MB",
                                      "file", "upload_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def create_app(model: SpeechModel, settings: ServeSettings | None = None):
    settings = settings or ServeSettings()
    batcher = Batcher(model, settings.max_batch, settings.batch_wait_ms)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()

    app = FastAPI(title="osum", description="Speech understanding: transcripts and labels from audio.",
                  lifespan=lifespan)
    app.state.batcher = batcher
    app.state.settings = settings

    @app.exception_handler(ApiError)
    async def api_error(_request, err: ApiError):
        return JSONResponse(_error_body(err.status, err.message, err.param, err.code), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", [])[1:]) or None
        message = f"{field}: {first.get('msg', 'invalid request')}" if field else str(first.get("msg", "invalid request"))
        return JSONResponse(_error_body(422, message, field, "invalid_field"), status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(_request, err: Exception):
        log.exception("request failed")
        return JSONResponse(_error_body(500, f"internal error: {type(err).__name__}: {err}"), status_code=500)

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if settings.api_key and request.url.path != "/health":
            header = request.headers.get("authorization", "")
            if header != f"Bearer {settings.api_key}":
                reason = "missing bearer token" if not header else "wrong bearer token"
                return JSONResponse(_error_body(401, f"{reason}: send 'Authorization: Bearer <key>'"), status_code=401)
        return await call_next(request)

    def check_duration(name: str, seconds: float) -> None:
        if seconds > settings.max_audio_seconds:
            raise ApiError(413, f"{name}: {seconds:.0f} s of audio; this server takes at most "
                           f"{settings.max_audio_seconds:.0f} s per request", "file", "audio_too_long")

    async def read_upload(file: UploadFile):
        data = await file.read()
        name = file.filename or "upload"
        if not data:
            raise ApiError(400, f"{name}: the uploaded file is empty", "file", "empty_file")
        try:  # the header says how long it is: refuse hours of audio before decoding them
            frames, rate = audio_info(data)
            check_duration(name, frames / rate)
        except AudioError:
            pass  # no readable header: decoding below says what is wrong
        try:
            audio = await asyncio.to_thread(read_input, data)
        except AudioError as err:
            too_short = "too short" in str(err)
            raise ApiError(400 if too_short else 415, f"{name}: {err}" + ("" if too_short else
                           " (send WAV, FLAC, OGG or MP3)"), "file", "audio_too_short" if too_short else "unsupported_audio") from None
        audio.key = name.rsplit(".", 1)[0]
        check_duration(name, audio.duration)  # headers can be wrong (MP3 lengths are estimates)
        return audio

    def check_task(task: str, prompt: str | None = None) -> str:
        try:
            tag = canonical_task(task)
        except UnknownTaskError as err:
            raise ApiError(422, str(err), "task", "unknown_task") from None
        # Refused here, not in the batch: a request the model cannot answer must not fail the requests batched with it.
        for field, asked in (("task", None), ("prompt", prompt)):
            try:
                model.check_request(tag, asked)
            except ValueError as err:
                raise ApiError(422, str(err), field, f"unsupported_{field}") from None
        return tag

    def decoding(temperature: float | None) -> dict[str, Any]:
        if temperature is None or temperature == 0:
            return {}
        if not 0 < temperature <= 2:
            raise ApiError(400, f"temperature {temperature} must be between 0 and 2", "temperature")
        return {"do_sample": True, "temperature": temperature}

    @app.get("/health")
    async def health():
        batcher = app.state.batcher
        return {"status": "ok", "model": settings.model_name, "requests": batcher.requests, "batches": batcher.batches}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "owned_by": "osum"}]}

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        file: UploadFile = File(...),
        model: str | None = Form(None),
        language: str | None = Form(None),
        prompt: str | None = Form(None),
        response_format: str = Form("json"),
        temperature: float | None = Form(None),
    ):
        if response_format not in RESPONSE_FORMATS:
            raise ApiError(400, f"response_format {response_format!r}: choose one of {', '.join(RESPONSE_FORMATS)}",
                           "response_format")
        options = decoding(temperature)
        audio = await read_upload(file)
        result = await app.state.batcher.submit(audio, "<TRANSCRIBE>", **options)
        text = result.get("text") or ""
        if response_format == "json":
            return {"text": text}
        if response_format == "text":
            return PlainTextResponse(text + "\n")
        if response_format == "srt":
            return PlainTextResponse(formats.srt(result))
        if response_format == "vtt":
            return PlainTextResponse(formats.vtt(result), media_type="text/vtt")
        segments = [{"id": i, "start": s["start"], "end": s["end"], "text": s["text"]}
                    for i, s in enumerate(result.get("segments") or [])]
        return {"task": "transcribe", "language": language, "duration": result["duration"], "text": text,
                "segments": segments, "words": result.get("words")}

    @app.post("/v1/audio/understand")
    async def understand(
        file: UploadFile = File(...),
        task: str = Form("<TRANSCRIBE>"),
        prompt: str | None = Form(None),
        language: str | None = Form(None),
        label_scoring: bool = Form(True),
        temperature: float | None = Form(None),
        max_new_tokens: int | None = Form(None),
    ):
        tag = check_task(task, prompt)
        options: dict[str, Any] = dict(decoding(temperature), label_scoring=label_scoring)
        if prompt:
            options["prompt"] = prompt
        if language:
            options["language"] = language
        if max_new_tokens is not None:
            if not 1 <= max_new_tokens <= 4096:
                raise ApiError(400, f"max_new_tokens {max_new_tokens} must be between 1 and 4096", "max_new_tokens")
            options["max_new_tokens"] = max_new_tokens
        audio = await read_upload(file)
        try:
            return await app.state.batcher.submit(audio, tag, **options)
        except (UnknownTaskError, ValueError) as err:  # e.g. a <TRANSLATE> prompt without a language
            raise ApiError(422, str(err), "task") from None

    return UploadLimit(app, int(settings.max_upload_mb * 1_000_000)) if settings.max_upload_mb else app


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          settings: ServeSettings | None = None) -> None:
    """Load the model and serve it until interrupted."""
    import uvicorn
    from pathlib import Path

    settings = settings or ServeSettings()
    if settings.model_name == "osum":
        settings.model_name = Path(model_dir).resolve().name
    model = SpeechModel.load(model_dir, device)
    app = create_app(model, settings)
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        log.warning("serving on %s without --api-key: anyone who can reach this address can use the model", host)
    log.info("serving %s on http://%s:%d (docs at /docs)", model_dir, host, port)
    uvicorn.run(app, host=host, port=port, log_level="info")
