"""A GCS API server on 127.0.0.1 for the tests: the `gcp-storage-emulator` package, plus preconditions.

    python tests/gcs_server.py PORT [LATENCY_SECONDS]

The emulator implements the JSON API that google-cloud-storage speaks, but it ignores the
`ifGenerationMatch` precondition, which real GCS enforces and gristmill's leases and manifest
replacement rely on. This wrapper adds it to uploads and deletes (412 when the object's
generation differs; 0 means "must not exist"), and can add a fixed latency to every request,
so races that GCS's round trips open can be reproduced. Everything else is the emulator's.
"""

from __future__ import annotations

import json
import sys
import time
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

LATENCY = [0.0]


def _generation(storage, bucket: str, name: str) -> int:
    try:
        return int(storage.get_file_obj(bucket, name).get("generation", 0))
    except NotFound:
        return 0


def _with_precondition(handler, name_of):
    def wrapped(request, response, storage, *args, **kwargs):
        time.sleep(LATENCY[0])
        want = request.query.get("ifGenerationMatch")
        if want:
            bucket, name = request.params["bucket_name"], name_of(request)
            if name is not None and _generation(storage, bucket, name) != int(want[0]):
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "conditionNotMet"}})
                return None
        return handler(request, response, storage, *args, **kwargs)
    return wrapped


def _upload_name(request):
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data
    if isinstance(data, dict):
        return (data.get("meta") or {}).get("name") or data.get("name")
    try:
        return json.loads(data or b"{}").get("name")
    except (ValueError, AttributeError):
        return None


objects.insert = _with_precondition(objects.insert, _upload_name)
objects.delete = _with_precondition(objects.delete, lambda request: request.params.get("object_id"))
objects.get = _with_precondition(objects.get, lambda request: None)
objects.ls = _with_precondition(objects.ls, lambda request: None)
objects.download = _with_precondition(objects.download, lambda request: None)

from gcp_storage_emulator.server import create_server  # noqa: E402  (after the handlers are wrapped)


def main(argv: list[str]) -> None:
    """Serves on 127.0.0.1:PORT in memory until killed."""
    port = int(argv[1])
    LATENCY[0] = float(argv[2]) if len(argv) > 2 else 0.0
    server = create_server("127.0.0.1", port, in_memory=True)
    server.run()


if __name__ == "__main__":
    main(sys.argv)
