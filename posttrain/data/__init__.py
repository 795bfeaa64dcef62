"""Training data: records, readers and writers for JSONL/Parquet/`datasets`, and format adapters."""

from posttrain.data.formats import FORMATS, REASONS, FieldError, detect_format, parse_record
from posttrain.data.readers import (
    DataError,
    ReadReport,
    ReadResult,
    parse_rows,
    read_from_config,
    read_many,
    read_records,
)
from posttrain.data.records import (
    RECORD_TYPES,
    ROLES,
    Conversation,
    Message,
    Preference,
    Prompt,
    PromptCompletion,
    Ranking,
    Record,
    Text,
    Unpaired,
    messages_to_dicts,
)
from posttrain.data.writers import record_to_json, write_jsonl

__all__ = [
    "FORMATS", "REASONS", "RECORD_TYPES", "ROLES",
    "Conversation", "DataError", "FieldError", "Message", "Preference", "Prompt", "PromptCompletion",
    "Ranking", "ReadReport", "ReadResult", "Record", "Text", "Unpaired",
    "detect_format", "messages_to_dicts", "parse_record", "parse_rows", "read_from_config", "read_many",
    "read_records", "record_to_json", "write_jsonl",
]
