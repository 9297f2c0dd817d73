"""The `Event` example: POST /ingest/events -> topic events -> table events."""

from datetime import datetime

from chute import IngestPipeline, IngestPipelineConfig, Key
from pydantic import BaseModel


class Event(BaseModel):
    id: Key[str]
    user_id: str
    timestamp: datetime
    event_type: str


events = IngestPipeline[Event]("events", IngestPipelineConfig(
    ingest=True, stream=True, table=True, dead_letter_queue=True))
