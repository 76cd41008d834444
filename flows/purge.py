"""``forget purge``: a new dataset version without a request's images, old copies deleted.

Until purged, forgotten classes' images stay so later requests can measure Acc_o. The purge
is an explicit operator step; it is resumable (each step checks what is already done).
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.faults import crash_point
from tasks.locks import run_lock
from tasks.purge import DATASET, check_and_record, finish_record, remove_old_versions, write_purged_dataset
from tasks.versioning import track
from tasks.workspace import Workspace


@flow(name="purge", log_prints=True)
def purge_flow(root: str, request_id: str) -> dict:
    ws = Workspace.at(root)
    with run_lock(ws, f"purging {request_id}"):  # no request is processed meanwhile
        req = check_and_record(root, request_id)
        crash_point("purge-after-record")
        after = write_purged_dataset(root, req.classes)
        track(root, [DATASET], f"purge {request_id}: dataset {after[:12]}")
        crash_point("purge-after-dataset")
        removed = remove_old_versions(root, req.purge.image_sha256s)
        rec = finish_record(root, request_id, after, removed)
        track(root, [ws.rel(ws.requests)], f"purge {request_id}: audit record")
    get_run_logger().info(f"purged {len(rec.image_sha256s)} images of {request_id}; "
                          f"{removed} cached objects removed")
    return rec.model_dump(exclude={"image_sha256s"}) | {"images": len(rec.image_sha256s)}
