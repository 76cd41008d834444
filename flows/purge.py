"""``forget purge``: a new dataset version without a request's images, old copies deleted.

Until purged, forgotten classes' images stay so later requests can measure Acc_o. The purge
is an explicit operator step; it is resumable (each step checks what is already done).
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger

from forgetting.data import image_hashes, read_info
from forgetting.train import RequestError
from tasks import registry
from tasks.faults import crash_point
from tasks.ledger import Purge, file_lock
from tasks.model_tasks import forgotten_in
from tasks.purge import DATASET, last_acc_o, remove_old_versions, write_purged_dataset
from tasks.requests import ledger
from tasks.versioning import track
from tasks.workspace import Workspace


@flow(name="purge", log_prints=True)
def purge_flow(root: str, request_id: str) -> dict:
    ws = Workspace.at(root)
    led = ledger(ws)
    with file_lock(ws.lock):  # no request is processed meanwhile
        req = led.get(request_id)
        if req.purge is not None and req.purge.cache_objects_removed >= 0:
            raise RequestError(f"{request_id} was purged already on {req.purge.at}")
        if req.status != "done":
            raise RequestError(f"{request_id} is {req.status}; only a request whose forgetting "
                               "is done can be purged")
        prod = registry.alias_version(registry.client(ws), "production")
        missing = set(req.classes) - set(forgotten_in(ws, prod))
        if missing:
            raise RequestError(f"the production model v{prod} has not forgotten "
                               f"{', '.join(sorted(missing))}; purge after it has")
        if req.purge is None:  # first attempt: measure and record while the images exist
            before = read_info(ws.dataset).content_hash
            rec = Purge(at=datetime.now(UTC).isoformat(timespec="seconds"),
                        dataset_version_before=before, dataset_version_after="",
                        image_sha256s=image_hashes(ws.dataset, req.classes),
                        cache_objects_removed=-1,
                        last_acc_o=last_acc_o(root, prod, req.classes),
                        last_acc_o_model_version=prod)
            req = led.update(request_id, purge=rec.model_dump())
        crash_point("purge-after-record")
        after = write_purged_dataset(root, req.classes)
        track(root, [DATASET], f"purge {request_id}: dataset {after[:12]}")
        crash_point("purge-after-dataset")
        removed = remove_old_versions(root, req.purge.image_sha256s)
        rec = req.purge.model_copy(update={"dataset_version_after": after,
                                           "cache_objects_removed": removed})
        led.update(request_id, purge=rec.model_dump())
        track(root, [ws.rel(ws.requests)], f"purge {request_id}: audit record")
    get_run_logger().info(f"purged {len(rec.image_sha256s)} images of {request_id}; "
                          f"{removed} cached objects removed")
    return rec.model_dump(exclude={"image_sha256s"}) | {"images": len(rec.image_sha256s)}
