"""Rows as the real server sends them, to plant in a throw-away mirror without a server.

Each row starts from what the server answers for a freshly made object (every field, with the
server's defaults), takes the fields a test sets, is checked against the resource's wire
schema and is normalised as the transport normalises replies: it is a row the mirror could
have been handed by the server.
"""

from __future__ import annotations

from typing import Any

from balsam_sync.remote.rest import normalize_row
from balsam_sync.resources import RESOURCES, Row

STAMP = "2025-05-01T12:00:00.000000+00:00"

_FRESH: dict[str, Row] = {
    "Site": {
        "name": "site",
        "path": "/projects/site",
        "globus_endpoint_id": None,
        "backfill_windows": {},
        "queued_jobs": {},
        "optional_batch_job_params": {},
        "allowed_projects": [],
        "allowed_queues": {},
        "transfer_locations": {},
        "last_refresh": STAMP,
        "creation_date": STAMP,
    },
    "App": {
        "name": "Hello",
        "serialized_class": "txt",
        "source_code": "print('hi')",
        "description": "",
        "parameters": {},
        "transfers": {},
    },
    "Job": {
        "workdir": "w/1",
        "tags": {},
        "serialized_parameters": "",
        "data": {},
        "return_code": None,
        "num_nodes": 1,
        "ranks_per_node": 1,
        "threads_per_rank": 1,
        "threads_per_core": 1,
        "launch_params": {},
        "gpus_per_rank": 0,
        "node_packing_count": 1,
        "wall_time_min": 0,
        "last_update": STAMP,
        "pending_file_cleanup": True,
        "serialized_return_value": "",
        "serialized_exception": "",
        "batch_job_id": None,
        "state": "STAGED_IN",
        "parent_ids": [],
    },
    "BatchJob": {
        "num_nodes": 1,
        "wall_time_min": 10,
        "job_mode": "mpi",
        "optional_params": {},
        "filter_tags": {},
        "partitions": None,
        "scheduler_id": None,
        "project": "p",
        "queue": "debug",
        "state": "pending_submission",
        "status_info": {},
        "start_time": None,
        "end_time": None,
    },
    "TransferItem": {
        "state": "awaiting_job",
        "task_id": "",
        "transfer_info": {},
        "direction": "in",
        "local_path": "in.dat",
        "remote_path": "/remote/in.dat",
        "location_alias": "laptop",
        "recursive": False,
    },
    "EventLog": {
        "timestamp": STAMP,
        "from_state": "CREATED",
        "to_state": "STAGED_IN",
        "data": {},
    },
}


def server_row(resource: str, **fields: Any) -> Row:
    """A row of ``resource`` as the server would send it, with ``fields`` set (``id`` and the
    ids it refers to are the caller's)."""
    res = RESOURCES[resource]
    row = {**_FRESH[resource], **fields}
    unknown = set(row) - set(res.out.model_fields)
    assert not unknown, f"{resource} has no field(s) {sorted(unknown)}"
    res.out.model_validate(row)
    return normalize_row(res, row)
