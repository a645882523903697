"""Bodies of the batch routes, shaped like OpenAI's Batch API (`service.batch.routes`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class RequestCounts(BaseModel):
    """How many of a batch job's requests are done."""

    total: int
    completed: int = Field(description="Answered with results.")
    failed: int = Field(description="Answered with an error (see the job's errors file).")


class BatchJob(BaseModel):
    """A batch job: its status and progress."""

    id: str
    object: Literal["batch"] = "batch"
    status: Literal["validating", "in_progress", "cancelling", "completed", "failed", "cancelled"]
    created_at: str
    updated_at: str
    request_counts: RequestCounts
    error: str | None = Field(description="Why the job failed (null unless status is failed).")


class BatchList(BaseModel):
    """A page of batch jobs, newest first."""

    object: Literal["list"] = "list"
    data: list[BatchJob]
    has_more: bool
    last_id: str | None = Field(description="Pass as `after` to get the next page.")


class BatchCreate(BaseModel):
    """Batch requests as JSON (the alternative to a multipart JSONL upload in field `file`)."""

    model_config = ConfigDict(extra="forbid")
    requests: list[dict[str, Any]] = Field(
        min_length=1,
        description='Each `{"custom_id", "query", "k"?, "model"?}`, checked like a JSONL line.',
    )


class BatchDeleted(BaseModel):
    """A deleted batch job."""

    id: str
    object: Literal["batch.deleted"] = "batch.deleted"
    deleted: Literal[True] = True
