"""The batch API, shaped like OpenAI's Batch API: create, inspect, list, cancel, download.

`POST /batches` takes a JSONL upload (multipart field `file`) or `{"requests": [...]}`. Every
line is checked before the job exists: a file with a bad line is refused with 422, one entry per
problem naming the line, so a job never runs on input its author did not mean. Accepted jobs
are scored by `service.batch.worker` in the background; answers that fail at scoring time (a
query over the token limit, a model the bundle lacks) are error lines in the output, also served
alone by `/batches/{id}/errors`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path as FilePath
from typing import IO, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from service.api.auth import ADMIN_RESPONSES, OPTIONAL_AUTH, require_admin_key
from service.api.docs import RETRY_AFTER_HEADER
from service.api.errors import ERROR_BODY, api_error
from service.api.routing import api_router, json_refusal
from service.api.state import RETRY_AFTER_S, state_of
from service.batch.intake import CheckerStopped, InputLimits, InputRefused
from service.batch.requests import BatchInputError, NotUtf8
from service.batch.schemas import BatchCreate, BatchDeleted, BatchJob, BatchList, RequestCounts
from service.batch.store import TERMINAL, BatchJobRecord, JobStore
from service.settings import Settings
from service.storage import StoreUnavailable, reason
from service.validation import JsonRefused, strict_json, validation_details

JSONL = "application/x-ndjson"
# Seconds a client is told to wait when every upload slot is taken.
UPLOAD_RETRY_AFTER_S = 2
JOB_ID = r"^batch_[0-9a-f]{32}$"

BatchId = Annotated[str, Path(pattern=JOB_ID, description="A job id from POST /batches.")]


def job_model(job: BatchJobRecord) -> BatchJob:
    """The API shape of a stored job."""
    counts = RequestCounts(total=job.total, completed=job.completed, failed=job.failed)
    return BatchJob(
        id=job.id,
        status=job.status,
        created_at=job.created_at,
        updated_at=job.updated_at,
        request_counts=counts,
        error=job.error,
    )


def _store(request: Request) -> JobStore:
    store = state_of(request).job_store
    if store is None:
        headers = {"Retry-After": "1"}
        msg = "not ready: the batch job store is starting; retry shortly"
        raise api_error(status.HTTP_503_SERVICE_UNAVAILABLE, [], msg, "not_ready", headers)
    return store


async def _job(store: JobStore, batch_id: str) -> BatchJobRecord:
    """The job `batch_id` (404 when there is none), read in a worker thread: the database may
    be a network away."""
    job = await asyncio.to_thread(store.get, batch_id)
    if job is None:
        msg = f"batch_id: there is no batch job {batch_id}"
        raise api_error(status.HTTP_404_NOT_FOUND, ["path", "batch_id"], msg, "batch_not_found")
    return job


def _refuse_lines(exc: BatchInputError, field: str) -> Exception:
    details = [
        {"loc": ["body", field], "msg": f"{field}: {problem}", "type": "batch_line_invalid"}
        for problem in exc.problems
    ]
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=details)


async def _spool_input(request: Request, spool: FilePath) -> str:
    """Write the requests to the file `spool` and name the field they came in: an upload
    (received into a temporary file as it arrives, never held whole in memory, then copied),
    or the requests of a JSON body, one per line."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=1)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            msg = "file: is required (a JSONL file in multipart field 'file')"
            raise api_error(422, ["body", "file"], msg, "missing")
        await asyncio.to_thread(_copy, upload.file, spool)
        return "file"
    if content_type.startswith("application/json"):
        try:
            payload = await asyncio.to_thread(strict_json, await request.body())
        except JsonRefused as exc:
            raise json_refusal(exc) from exc
        try:
            body = BatchCreate.model_validate(payload)
        except ValidationError as exc:
            limits = {"requests": "a list of 1 or more request objects"}
            errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
            raise HTTPException(422, detail=validation_details(errors, limits)) from exc
        lines = "".join(json.dumps(r) + "\n" for r in body.requests)
        await asyncio.to_thread(spool.write_text, lines, encoding="utf-8")
        return "requests"
    msg = (
        "body: send a JSONL file as multipart/form-data field 'file', or application/json "
        '{"requests": [...]}'
    )
    raise api_error(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, ["body"], msg, "unsupported_media")


def _copy(source: IO[bytes], path: FilePath) -> None:
    source.seek(0)
    with path.open("wb") as target:
        shutil.copyfileobj(source, target)


def _refusal(exc: Exception, field: str) -> Exception:
    """The answer to an input the checker refused, or that could not be stored."""
    if isinstance(exc, NotUtf8):
        msg = f"{field}: must be UTF-8 ({exc})"
        return api_error(422, ["body", field], msg, "file_not_utf8")
    if isinstance(exc, BatchInputError):
        return _refuse_lines(exc, field)
    if isinstance(exc, InputRefused):
        return api_error(422, ["body", field], f"{field}: {exc.problem}", exc.code)
    if isinstance(exc, OSError | StoreUnavailable | CheckerStopped):
        why = reason(exc, "the batch job") if isinstance(exc, OSError) else str(exc)
        msg = f"batch: the job was not created ({why}); retry later"
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        code = status.HTTP_503_SERVICE_UNAVAILABLE
        return api_error(code, [], msg, "batch_store_unavailable", headers)
    return exc


async def _create_job(request: Request, store: JobStore) -> BatchJobRecord:
    """Stage a job, spool its requests, check them in the input checker's process, and
    commit the job; a refused or failed input leaves nothing behind."""
    state = state_of(request)
    settings = state.settings
    job_id = await asyncio.to_thread(store.stage)
    spool = store.job_dir(job_id) / "upload.jsonl"
    field = "requests"
    try:
        field = await _spool_input(request, spool)
        limits = InputLimits(
            max_lines=settings.max_batch_lines,
            max_query_chars=settings.max_query_chars,
            max_k=settings.max_k,
            default_k=settings.default_k,
        )
        total = await state.input_checker.check(spool, store.staged_input_path(job_id), limits)
        await asyncio.to_thread(spool.unlink)
        return await asyncio.to_thread(store.commit, job_id, total)
    except BaseException as exc:
        await asyncio.to_thread(store.discard, job_id)
        refusal = _refusal(exc, field) if isinstance(exc, Exception) else exc
        if refusal is exc:
            raise
        raise refusal from exc


def _error_lines(lines: Iterator[bytes]) -> Iterator[bytes]:
    for line in lines:
        if json.loads(line)["error"] is not None:
            yield line


UPLOAD_SCHEMA = {
    "type": "object",
    "properties": {"file": {"type": "string", "format": "binary"}},
    "required": ["file"],
}
CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": BatchCreate.model_json_schema()},
            "multipart/form-data": {"schema": UPLOAD_SCHEMA},
        },
    },
    **OPTIONAL_AUTH,
}
BAD_PARAMS = {422: {**ERROR_BODY, "description": "A path or query parameter is malformed."}}
NOT_FOUND = {404: {**ERROR_BODY, "description": "No job has this id."}, **BAD_PARAMS}
FINISHED = {
    **NOT_FOUND,
    200: {"content": {JSONL: {"schema": {"type": "string"}}}, "description": "JSONL."},
    409: {**ERROR_BODY, "description": "The job has not finished yet."},
}


def create_responses(max_body_bytes: int) -> dict[int | str, dict[str, Any]]:
    """What `POST /batches` can answer besides 201."""
    return {
        400: {**ERROR_BODY, "description": "The JSON body cannot be parsed."},
        413: {**ERROR_BODY, "description": f"The upload is larger than {max_body_bytes} bytes."},
        415: {**ERROR_BODY, "description": "Neither multipart/form-data nor JSON."},
        429: {
            **ERROR_BODY,
            "headers": RETRY_AFTER_HEADER,
            "description": "XC_MAX_CONCURRENT_UPLOADS uploads are being received; retry after "
            "`Retry-After` seconds.",
        },
        422: {**ERROR_BODY, "description": "Bad lines (each named), or too many lines."},
        503: {
            **ERROR_BODY,
            "description": "The job could not be stored (a full disk: the message says what "
            "failed); nothing was created. Retry after `Retry-After` seconds.",
        },
    }


async def create_batch(request: Request) -> BatchJob:
    """Check every request, store them, and queue the job for the background worker.

    At most `XC_MAX_CONCURRENT_UPLOADS` bodies are received at once (429 beyond); each is
    spooled to disk as it arrives and checked line by line in a separate, low-priority process,
    so large uploads neither fill memory nor slow the searches.
    """
    state = state_of(request)
    store = _store(request)
    slots = state.upload_slots
    if slots.locked():
        limit = state.settings.max_concurrent_uploads
        msg = f"batches: {limit} uploads are being received, limit {limit}; retry shortly"
        headers = {"Retry-After": str(UPLOAD_RETRY_AFTER_S)}
        code = status.HTTP_429_TOO_MANY_REQUESTS
        raise api_error(code, [], msg, "too_many_uploads", headers)
    async with slots:
        job = await _create_job(request, store)
    return job_model(job)


async def list_batches(
    request: Request,
    after: Annotated[str | None, Query(pattern=JOB_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchList:
    """A page of jobs; pass the last id as `after` for the next page."""
    jobs, more = await asyncio.to_thread(_store(request).page, after, limit)
    return BatchList(
        data=[job_model(job) for job in jobs],
        has_more=more,
        last_id=jobs[-1].id if jobs else None,
    )


async def get_batch(request: Request, batch_id: BatchId) -> BatchJob:
    """Status and request counts of one job."""
    return job_model(await _job(_store(request), batch_id))


async def cancel_batch(request: Request, batch_id: BatchId) -> BatchJob:
    """A waiting job is cancelled at once; a running one after its current chunk."""
    store = _store(request)
    await _job(store, batch_id)
    job = await asyncio.to_thread(store.cancel, batch_id)
    assert job is not None
    return job_model(job)


async def _finished_output(request: Request, batch_id: str) -> Iterator[bytes]:
    """The output lines of a finished job (409 while it runs), read as they are sent."""
    store = _store(request)
    job = await _job(store, batch_id)
    if job.status not in TERMINAL:
        msg = f"status: the job is {job.status}; its output is ready once it has finished"
        raise api_error(status.HTTP_409_CONFLICT, ["path", "batch_id"], msg, "not_finished")
    return store.output_lines(job.id)


async def delete_batch(request: Request, batch_id: BatchId) -> BatchDeleted:
    """Delete a finished job and its files (409 while it runs: cancel it first)."""
    store = _store(request)
    job = await _job(store, batch_id)
    if not await asyncio.to_thread(store.delete, batch_id):
        msg = f"status: the job is {job.status}; cancel it, then delete it once it has finished"
        raise api_error(status.HTTP_409_CONFLICT, ["path", "batch_id"], msg, "not_finished")
    return BatchDeleted(id=batch_id)


async def batch_output(request: Request, batch_id: BatchId) -> Any:
    """`{"custom_id", "response", "error"}` per request."""
    return StreamingResponse(await _finished_output(request, batch_id), media_type=JSONL)


async def batch_errors(request: Request, batch_id: BatchId) -> Any:
    """The output lines whose `error` is set."""
    lines = await _finished_output(request, batch_id)
    return StreamingResponse(_error_lines(lines), media_type=JSONL)


def make_batch_router(settings: Settings) -> APIRouter:
    """The /batches routes, behind the API key when one is set (the documented upload limit
    is the settings')."""
    router = api_router(
        tags=["batches"], dependencies=[Depends(require_admin_key)], responses=ADMIN_RESPONSES
    )
    router.add_api_route(
        "/batches",
        create_batch,
        methods=["POST"],
        status_code=status.HTTP_201_CREATED,
        summary="Create a batch job from JSONL requests",
        operation_id="create_batch",
        openapi_extra=CREATE_BODY,
        responses=create_responses(settings.max_batch_file_bytes),
    )
    routes: list[tuple[str, Any, str, str, dict[Any, Any], dict[str, Any]]] = [
        ("/batches", list_batches, "GET", "List batch jobs, newest first", BAD_PARAMS, {}),
        ("/batches/{batch_id}", get_batch, "GET", "A batch job", NOT_FOUND, {}),
        ("/batches/{batch_id}/cancel", cancel_batch, "POST", "Cancel a batch job", NOT_FOUND, {}),
        (
            "/batches/{batch_id}",
            delete_batch,
            "DELETE",
            "Delete a finished batch job and its files",
            {**NOT_FOUND, 409: {**ERROR_BODY, "description": "The job has not finished yet."}},
            {},
        ),
        (
            "/batches/{batch_id}/output",
            batch_output,
            "GET",
            "A finished job's answers (JSONL, one line per request, in input order)",
            FINISHED,
            {"response_class": StreamingResponse},
        ),
        (
            "/batches/{batch_id}/errors",
            batch_errors,
            "GET",
            "A finished job's failed requests (JSONL)",
            FINISHED,
            {"response_class": StreamingResponse},
        ),
    ]
    for path, endpoint, method, summary, responses, extra in routes:
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            summary=summary,
            operation_id=endpoint.__name__,
            responses=responses,
            openapi_extra=OPTIONAL_AUTH,
            **extra,
        )
    return router
