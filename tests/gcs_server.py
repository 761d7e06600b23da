"""A GCS API server on 127.0.0.1 for the tests: the `gcp-storage-emulator` package, plus preconditions.

    python tests/gcs_server.py PORT [LATENCY_SECONDS]

The emulator implements the JSON API that google-cloud-storage speaks, but it ignores the
`ifGenerationMatch` precondition, which real GCS enforces and gristmill's leases and manifest
replacement rely on. This wrapper adds it to uploads and deletes (412 when the object's
generation differs; 0 means "must not exist"), and can add a fixed latency to every request,
so races that GCS's round trips open can be reproduced. Everything else is the emulator's.

Requests are served concurrently, like GCS: each connection has its own thread, which reads the
whole request and waits out the latency on its own, and sends the response after its turn, so a
client that is stopped or killed in the middle of a request delays nobody else (the emulator alone
serves one connection at a time). The emulator's handlers run one at a time under a lock, so a
precondition's check and the write it guards are one atomic step, as on GCS.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from http import HTTPStatus
from http import server as http_server

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

LATENCY = [0.0]
HANDLING = threading.Lock()  # one handler at a time: the emulator's storage is not thread-safe


def _generation(storage, bucket: str, name: str) -> int:
    try:
        return int(storage.get_file_obj(bucket, name).get("generation", 0))
    except NotFound:
        return 0


def _with_precondition(handler, name_of):
    def wrapped(request, response, storage, *args, **kwargs):
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

from gcp_storage_emulator import server as emulator_server  # noqa: E402  (after the handlers are wrapped)
from gcp_storage_emulator.server import create_server  # noqa: E402


class _ShortBody(Exception):
    """The client went away before sending its whole request (GCS discards such an upload)."""


def _read_body(handler) -> bytes:
    """The request's whole body as the client sent it (Content-Length or chunked), read before any lock."""
    length = handler.headers.get("Content-Length")
    if length:
        body = handler.rfile.read(int(length))
        if len(body) < int(length):
            raise _ShortBody()
        return body
    if (handler.headers.get("Transfer-Encoding") or "").lower() != "chunked":
        return b""
    chunks = []
    while True:
        line = handler.rfile.readline()
        if not line:
            raise _ShortBody()
        size = int(line.strip() or b"0", 16)
        chunks.append(line)
        if size == 0:
            chunks.append(handler.rfile.readline())
            return b"".join(chunks)
        data = handler.rfile.read(size)
        if len(data) < size:
            raise _ShortBody()
        chunks.append(data + handler.rfile.readline())


def _serialised(do):
    """do_<METHOD> reading the request before, and sending the response after, the handler's turn."""
    def wrapped(self):
        try:
            self.rfile = io.BytesIO(_read_body(self))
        except _ShortBody:
            self.close_connection = True
            return
        time.sleep(LATENCY[0])
        connection, self.wfile = self.wfile, io.BytesIO()
        try:
            with HANDLING:
                do(self)
        finally:
            response, self.wfile = self.wfile.getvalue(), connection
            self.wfile.write(response)
    return wrapped


for _method in ("do_GET", "do_POST", "do_PUT", "do_PATCH", "do_DELETE"):
    setattr(emulator_server.RequestHandler, _method, _serialised(getattr(emulator_server.RequestHandler, _method)))
http_server.HTTPServer = http_server.ThreadingHTTPServer  # the emulator's API thread builds its server from this name


def main(argv: list[str]) -> None:
    """Serves on 127.0.0.1:PORT in memory until killed."""
    port = int(argv[1])
    LATENCY[0] = float(argv[2]) if len(argv) > 2 else 0.0
    server = create_server("127.0.0.1", port, in_memory=True)
    server.run()


if __name__ == "__main__":
    main(sys.argv)
