"""`osum serve`: an HTTP server for a model (FastAPI + uvicorn).

    POST /v1/audio/transcriptions   OpenAI-compatible speech recognition (multipart: file, model, language,
                                    prompt, response_format json|text|srt|verbose_json|vtt, temperature)
    POST /v1/audio/understand       file + task tags (or a prompt) -> the structured result of `generate`
    GET  /health, GET /v1/models

Errors are JSON in OpenAI's shape {"error": {"message", "type", "param", "code"}} with the status saying
who is at fault: 400 bad request, 401 missing/wrong token, 408 request body stalled, 413 upload, audio or
a text field too long, 415 not audio, 422 missing field or unknown task tag, 500 a failure of the server
(a generic message with an error id; the log has the id and the traceback; the server keeps serving).
No error body shows a directory of the server (the model directory appears as its name) or a memory address.
OpenAI's `prompt` (a vocabulary hint for Whisper) is accepted and ignored by /transcriptions: an osum
prompt is an instruction that selects the task; send one to /v1/audio/understand instead.

One model thread serves every request, so no request may hold it for long: text fields are bounded
(`max_prompt_chars`), as is the output a request may ask for (`max_new_tokens`); a request whose client
has gone is not decoded (counted in /health as `dropped`); a client that stops sending its body gets 408
after `body_timeout_seconds`, which frees the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException

from ..audio import AudioError, audio_info
from ..infer import formats
from ..infer.api import SpeechModel
from ..infer.inputs import read_input
from ..tasks import UnknownTaskError, canonical_task
from ..infer.presets import PRESETS
from .batcher import Batcher

log = logging.getLogger(__name__)

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
KEEP_ALIVE_SECONDS = 5  # an idle keep-alive connection is closed after this
GRACEFUL_SHUTDOWN_SECONDS = 30  # on Ctrl-C, open connections get this long to finish


@dataclass
class ServeSettings:
    model_name: str = "osum"
    api_key: str | None = None  # bearer token; None = no authentication
    max_upload_mb: float = 50.0
    max_audio_seconds: float = 1800.0  # longer audio is refused (413); long files are split within this
    max_batch: int = 16  # requests decoded together; 1 = no request batching
    batch_wait_ms: float = 10.0  # how long a request waits for others to join its batch
    max_prompt_chars: int = 4000  # longer text fields (prompt, task, language) are refused (413)
    max_new_tokens: int = 1024  # the most output tokens a request may ask for (more: 400)
    body_timeout_seconds: float = 30.0  # a client that sends no part of its body for this long gets 408; 0 = never
    preset: str | None = None  # decoding preset for requests that name none (osum.infer.presets; "osum")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


_ADDRESS = re.compile(r"\s*\bat 0x[0-9a-fA-F]+|0x[0-9a-fA-F]{6,}")
# An absolute path: a slash that starts a word, then at least two components.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])/(?:[^\s/'\"<>]+/)+([^\s/'\"<>,;:)]*)")


def public_message(message: str, model_dir: str | Path | None = None) -> str:
    """`message` with no directory of the server (the model directory becomes its name) and no memory address."""
    if model_dir:
        root = Path(model_dir)
        for form in sorted({str(root), str(root.absolute()), str(root.resolve())}, key=len, reverse=True):
            message = message.replace(form.rstrip("/"), root.resolve().name)
    message = _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "...", message)
    return _ADDRESS.sub("", message)


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
        body = json.dumps(_error_body(413, f"upload larger than the server's limit of {self.limit / 1e6:.0f} MB",
                                      "file", "upload_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class BodyTimeout:
    """ASGI middleware: a client that sends no part of its request body for `seconds` gets 408 and loses
    the connection (uvicorn itself waits forever for a stalled upload)."""

    def __init__(self, app, seconds: float):
        self.app, self.seconds = app, seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.seconds:
            return await self.app(scope, receive, send)
        body_done = responded = started = False

        async def timed_receive():
            nonlocal body_done, responded
            if responded:
                return {"type": "http.disconnect"}
            if body_done:  # after the body only a disconnect can come, and it may take any time
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.seconds)
            except asyncio.TimeoutError:
                if not started:
                    responded = True
                    await self._refuse(send)
                log.info("%s %s: the client sent no body for %g s; closing the connection", scope.get("method"),
                         scope.get("path"), self.seconds)
                return {"type": "http.disconnect"}  # the app stops reading; what it answers is dropped
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message):
            nonlocal started
            if responded:
                return
            started = True
            await send(message)

        await self.app(scope, timed_receive, guarded_send)

    async def _refuse(self, send) -> None:
        body = json.dumps(_error_body(408, f"the request body stalled: nothing received for {self.seconds:g} s",
                                      None, "request_timeout")).encode()
        await send({"type": "http.response.start", "status": 408,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class ClientGone(Exception):
    pass


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects. The body is read by then, so a disconnect is all that can come.
    (Starlette's `request.is_disconnected()` never sees it behind an `@app.middleware`.)"""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(model: SpeechModel, settings: ServeSettings | None = None, model_dir: str | Path | None = None,
               owns_model: bool = False):
    """The ASGI app. `model_dir`: where the model was loaded from (error messages show only its name).
    `owns_model`: close the model (its engine's worker processes) when the server shuts down."""
    settings = settings or ServeSettings()
    batcher = Batcher(model, settings.max_batch, settings.batch_wait_ms)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()
        if owns_model:
            # Here, not after uvicorn returns: on SIGTERM uvicorn shuts down, then raises the signal again, which
            # ends the process before any code after `run()`; vLLM's engine processes would outlive it.
            model.close()

    app = FastAPI(title="osum", description="Speech understanding: transcripts and labels from audio.",
                  lifespan=lifespan)
    app.state.batcher = batcher
    app.state.settings = settings
    app.state.client_gone = 0  # requests whose client went away before their answer

    def error(status: int, message: str, param: str | None = None, code: str | None = None,
              headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(_error_body(status, public_message(message, model_dir), param, code), status_code=status,
                            headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(_request, err: ApiError):
        return error(err.status, err.message, err.param, err.code)

    @app.exception_handler(HTTPException)
    async def http_error(_request, err: HTTPException):  # FastAPI's own: 404, 405, an unreadable body
        return error(err.status_code, str(err.detail), headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", [])[1:]) or None
        message = f"{field}: {first.get('msg', 'invalid request')}" if field else str(first.get("msg", "invalid request"))
        return error(422, message, field, "invalid_field")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        # The message may hold paths, object reprs, data: it goes to the log, the client gets an id to quote.
        error_id = uuid.uuid4().hex[:12]
        log.error("error %s: %s %s failed", error_id, request.method, request.url.path, exc_info=err)
        return error(500, f"internal server error (error id {error_id}; the server's log has the details)",
                     None, "internal_error")

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
            too_short = err.reason == "too_short"
            raise ApiError(400 if too_short else 415, f"{name}: {err}" + ("" if too_short else
                           " (send WAV, FLAC, OGG or MP3)"), "file", "audio_too_short" if too_short else "unsupported_audio") from None
        audio.key = name.rsplit(".", 1)[0]
        check_duration(name, audio.duration)  # headers can be wrong (MP3 lengths are estimates)
        return audio

    def check_text(**fields: str | None) -> None:
        for field, value in fields.items():
            if value is not None and len(value) > settings.max_prompt_chars:
                raise ApiError(413, f"{field}: {len(value)} characters; this server takes at most "
                               f"{settings.max_prompt_chars} (max_prompt_chars)", field, f"{field}_too_long")

    async def decode(request: Request, audio, task: str, **options: Any) -> dict[str, Any]:
        """The batcher's answer, or ClientGone (and the request is not decoded) when the client leaves first."""
        job = asyncio.ensure_future(batcher.submit(audio, task, **options))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if job.done():
            return job.result()
        job.cancel()  # cancels the batcher's future: the model thread skips it
        app.state.client_gone += 1
        log.info("%s %s: the client went away before its answer", request.method, request.url.path)
        raise ClientGone()

    @app.exception_handler(ClientGone)
    async def client_gone(_request, _err):
        return Response(status_code=499)  # nobody reads it; uvicorn drops it

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

    def decoding(temperature: float | None, preset: str | None = None) -> dict[str, Any]:
        preset = preset or settings.preset
        if preset is not None and preset not in PRESETS:
            raise ApiError(400, f"preset {preset!r}: choose one of {', '.join(sorted(PRESETS))}", "preset")
        options: dict[str, Any] = {"preset": preset} if preset else {}
        if temperature is None or temperature == 0:
            return options
        if not 0 < temperature <= 2:
            raise ApiError(400, f"temperature {temperature} must be between 0 and 2", "temperature")
        return options | {"do_sample": True, "temperature": temperature}

    @app.get("/health")
    async def health():
        batcher = app.state.batcher
        return {"status": "ok", "model": settings.model_name, "requests": batcher.requests, "batches": batcher.batches,
                "waiting": batcher.waiting, "client_gone": app.state.client_gone, "dropped": batcher.dropped}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "owned_by": "osum"}]}

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        request: Request,
        file: UploadFile = File(...),
        model: str | None = Form(None),
        language: str | None = Form(None),
        prompt: str | None = Form(None),
        response_format: str = Form("json"),
        temperature: float | None = Form(None),
    ):
        check_text(prompt=prompt, model=model, language=language)
        if response_format not in RESPONSE_FORMATS:
            raise ApiError(400, f"response_format {response_format!r}: choose one of {', '.join(RESPONSE_FORMATS)}",
                           "response_format")
        options = decoding(temperature)
        audio = await read_upload(file)
        result = await decode(request, audio, "<TRANSCRIBE>", **options)
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
        request: Request,
        file: UploadFile = File(...),
        task: str = Form("<TRANSCRIBE>"),
        prompt: str | None = Form(None),
        language: str | None = Form(None),
        label_scoring: bool = Form(True),
        temperature: float | None = Form(None),
        max_new_tokens: int | None = Form(None),
        preset: str | None = Form(None),
    ):
        check_text(prompt=prompt, task=task, language=language, preset=preset)
        tag = check_task(task, prompt)
        options: dict[str, Any] = dict(decoding(temperature, preset), label_scoring=label_scoring)
        if prompt:
            options["prompt"] = prompt
        if language:
            options["language"] = language
        if max_new_tokens is not None:
            if not 1 <= max_new_tokens <= settings.max_new_tokens:
                raise ApiError(400, f"max_new_tokens {max_new_tokens} must be between 1 and {settings.max_new_tokens} "
                               "(this server's limit)", "max_new_tokens")
            options["max_new_tokens"] = max_new_tokens
        audio = await read_upload(file)
        try:
            return await decode(request, audio, tag, **options)
        except (UnknownTaskError, ValueError) as err:  # e.g. a <TRANSLATE> prompt without a language
            raise ApiError(422, str(err), "task") from None

    outer = UploadLimit(app, int(settings.max_upload_mb * 1_000_000)) if settings.max_upload_mb else app
    return BodyTimeout(outer, settings.body_timeout_seconds)


def uvicorn_server(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"):
    """The uvicorn server `serve` runs (tests start the same one in a thread)."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                         timeout_keep_alive=KEEP_ALIVE_SECONDS,
                                         timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS))


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          settings: ServeSettings | None = None, engine: str = "torch",
          engine_options: dict[str, Any] | None = None) -> None:
    """Load the model and serve it until interrupted. `engine`: "torch" or "vllm" (osum.infer.engines)."""
    settings = settings or ServeSettings()
    if settings.model_name == "osum":
        settings.model_name = Path(model_dir).resolve().name
    with SpeechModel.load(model_dir, device, engine=engine, engine_options=engine_options) as model:
        app = create_app(model, settings, model_dir, owns_model=True)
        if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
            log.warning("serving on %s without --api-key: anyone who can reach this address can use the model", host)
        log.info("serving %s on http://%s:%d with the %s engine (docs at /docs)", model_dir, host, port, engine)
        uvicorn_server(app, host, port).run()
