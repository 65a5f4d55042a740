"""Files chunked over MQTT: the reassembler on its own, the hub on SQLite and PostgreSQL, and a real server whose
embedded broker gets good, corrupt, oversize and abandoned uploads from a real paho client."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from controltower.core.blobs import BlobStore
from controltower.core.context import Context
from controltower.iot import deadletters, store
from controltower.iot.commands import create_command, take_pending
from controltower.iot.device import File, file_messages
from controltower.iot.devices import create_device
from controltower.iot.filechunks import Completed, Reassembler
from controltower.iot.hub import BatchWrites, Hub
from controltower.iot.payloads import Rejected
from controltower.iot.schemas import CommandCreate, DeviceCreate
from tests.iot.mqtt_support import DeviceClient
from tests.support import start_server, wait_for

DATA = bytes(range(256)) * 40  # 10,240 bytes


def _messages(data: bytes = DATA, chunk: int = 4096, **header: object) -> list[tuple[str, bytes]]:
    """(rest after `files/`, payload) of each message, the header's fields overridable."""
    messages = file_messages("dev1", File(data, "application/x-test", "blob.bin"), None, chunk, "up1")
    first = {**json.loads(messages[0][1]), **header}
    rests = [topic.split("/files/", 1)[1] for topic, _ in messages]
    return [(rests[0], json.dumps(first).encode())] + [(r, p) for r, (_t, p) in zip(rests[1:], messages[1:],
                                                                                    strict=True)]


@pytest.fixture
def reassembler(tmp_path: Path) -> Reassembler:
    return Reassembler(tmp_path / "uploads", BlobStore(tmp_path / "blobs", 1 << 20), 64 * 1024, idle_s=60)


def _feed(reassembler: Reassembler, messages: list[tuple[str, bytes]]) -> list[object]:
    return [reassembler.receive("dev1", rest, payload) for rest, payload in messages]


def test_chunks_in_order_make_the_file_in_the_blob_store(reassembler: Reassembler) -> None:
    messages = _messages()
    results = _feed(reassembler, messages[:2] + messages[1:2] + messages[2:])  # chunk 0 resent: ignored
    done = results[-1]
    assert results[:-1] == [None] * (len(results) - 1)
    assert done.blob.sha256 == hashlib.sha256(DATA).hexdigest() and done.blob.size == len(DATA)
    assert reassembler.blobs.path(done.blob.sha256).read_bytes() == DATA
    assert (done.header.name, done.header.content_type, done.header.chunks) == ("blob.bin", "application/x-test", 3)
    assert _feed(reassembler, messages) == [None] * 4  # the whole upload replayed: already stored
    assert list(reassembler.directory.iterdir()) == []


def test_an_empty_file_is_complete_with_its_header(reassembler: Reassembler) -> None:
    [(rest, header)] = _messages(b"")
    done = reassembler.receive("dev1", rest, header)
    assert done is not None and done.blob.size == 0


@pytest.mark.parametrize(
    ("change", "kind", "reason"),
    [
        ({"size": 10**9}, "oversize", "body.size: 1000000000 bytes; the limit is 65536"),
        ({"sha256": "xyz"}, "invalid", "body.sha256: must be 64 lowercase hex digits"),
        ({"chunks": 0}, "invalid", "body.chunks: 0 chunks cannot carry 10240 bytes"),
        ({"command_id": "seven"}, "invalid", "body.command_id: must be an integer >= 1"),
        ({"colour": "red"}, "invalid", "body.colour: unknown field"),
    ],
)
def test_a_bad_header_is_refused_naming_the_field(reassembler: Reassembler, change: dict, kind: str,
                                                  reason: str) -> None:
    rest, header = _messages(**change)[0]
    with pytest.raises(Rejected) as refused:
        reassembler.receive("dev1", rest, header)
    assert refused.value.kind == kind and refused.value.reason.startswith(reason)
    assert reassembler.in_progress() == 0


def test_a_skipped_chunk_drops_the_upload(reassembler: Reassembler) -> None:
    messages = _messages()
    _feed(reassembler, messages[:2])
    with pytest.raises(Rejected, match="chunk 2 of upload 'up1' arrived when chunk 1 was expected"):
        reassembler.receive("dev1", *messages[3])
    assert reassembler.in_progress() == 0 and list(reassembler.directory.iterdir()) == []
    assert reassembler.receive("dev1", *messages[2]) is None  # the rest of a refused upload: one dead letter
    with pytest.raises(Rejected, match="no upload 'up2' in progress"):
        reassembler.receive("dev1", "up2/0", b"data")


def test_a_corrupt_chunk_fails_the_sha256_check(reassembler: Reassembler) -> None:
    messages = _messages()
    rest, chunk = messages[2]
    messages[2] = (rest, b"\xff" + chunk[1:])
    with pytest.raises(Rejected, match=r"body\.sha256: the chunks hash to"):
        _feed(reassembler, messages)
    assert list(reassembler.blobs.root.glob("*/*")) == []


def test_more_bytes_than_announced_are_refused(reassembler: Reassembler) -> None:
    messages = _messages(size=5000)
    with pytest.raises(Rejected) as refused:
        _feed(reassembler, messages)
    assert refused.value.kind == "oversize" and "goes past the announced 5000 bytes" in refused.value.reason


def test_a_device_has_a_bounded_number_of_uploads_in_progress(reassembler: Reassembler) -> None:
    for n in range(16):
        [(_rest, header)] = _messages()[:1]
        assert reassembler.receive("dev1", f"up{n}", header) is None
    with pytest.raises(Rejected, match="already has 16 uploads in progress"):
        reassembler.receive("dev1", "up16", header)
    assert reassembler.receive("dev2", "up0", header) is None  # another device is not affected
    assert reassembler.in_progress() == 17


def test_an_outcome_rolled_back_comes_again_for_the_same_message_once(reassembler: Reassembler) -> None:
    messages = _messages()
    done = _feed(reassembler, messages)[-1]
    assert isinstance(done, Completed)
    reassembler.outcomes_rolled_back()  # the transaction that recorded the file failed
    assert reassembler.receive("dev1", *messages[1]) is None  # another message of the upload: still ignored
    assert reassembler.receive("dev1", *messages[-1]) == done  # the message that completed it, handled again
    assert reassembler.receive("dev1", *messages[-1]) is None  # a resend of it in the same transaction
    reassembler.outcomes_committed()
    reassembler.outcomes_rolled_back()  # a later rollback does not bring back what was committed
    assert reassembler.receive("dev1", *messages[-1]) is None


def test_a_refusal_rolled_back_is_raised_again(reassembler: Reassembler) -> None:
    messages = _messages()
    _feed(reassembler, messages[:2])
    with pytest.raises(Rejected, match="arrived when chunk 1 was expected"):
        reassembler.receive("dev1", *messages[3])
    reassembler.outcomes_rolled_back()
    with pytest.raises(Rejected, match="arrived when chunk 1 was expected") as again:
        reassembler.receive("dev1", *messages[3])
    assert again.value.kind == "invalid"
    reassembler.outcomes_committed()
    assert reassembler.receive("dev1", *messages[3]) is None


def test_an_idle_upload_expires(tmp_path: Path) -> None:
    reassembler = Reassembler(tmp_path / "uploads", BlobStore(tmp_path / "blobs", 1 << 20), 1 << 20, idle_s=0.01)
    _feed(reassembler, _messages()[:2])
    assert reassembler.in_progress() == 1
    time.sleep(0.05)
    [(device_id, topic, reason)] = reassembler.expire()
    assert (device_id, topic) == ("dev1", "ct/d/dev1/files/up1") and "1 of 3 chunks arrived" in reason
    assert reassembler.in_progress() == 0 and list(reassembler.directory.iterdir()) == []


# -- the hub on both databases --------------------------------------------------------------------------------


def test_the_hub_stores_a_chunked_file_linked_to_its_command(ctx: Context, hub: Hub) -> None:
    with ctx.db.session() as session:
        device, _ = create_device(ctx, session, DeviceCreate(name="chunky"))
        command = create_command(ctx, session, device.id, CommandCreate(name="capture"))
        take_pending(ctx, session, device.id)
        device_id, command_id = device.id, command.id
    data = b"frame" * 1000
    for topic, payload in file_messages(device_id, File(data, "image/png", "f.png"), command_id, 1000):
        hub.message(topic, payload)
    bad = file_messages(device_id, File(b"x" * 3000, "image/png"), None, 1000)
    bad[2] = (bad[2][0], b"y" * 1000)
    for topic, payload in bad:
        hub.message(topic, payload)
    hub.message(f"ct/d/{device_id}/telemetry", json.dumps({"values": {"after": 1}}).encode())
    assert hub.flush()
    with ctx.db.read_session() as session:
        [row] = store.read_files(session, device_id)
        stored = (row.command_id, row.sha256, row.size, row.content_type)
        letters = [(x.kind, x.reason.split(":")[0]) for x in deadletters.read(session, device_id=device_id)]
    assert stored == (command_id, hashlib.sha256(data).hexdigest(), len(data), "image/png")
    assert ctx.blobs.path(stored[1]).read_bytes() == data
    assert letters == [("invalid", "body.sha256")]
    assert ctx.series.latest(name="iot.after", labels={"device": device_id})


def test_a_file_completed_in_a_failed_batch_is_recorded_when_its_messages_are_stored_alone(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ctx.db.session() as session:
        device, _ = create_device(ctx, session, DeviceCreate(name="unlucky"))
        device_id = device.id
    hub = Hub(ctx)
    data = b"frame" * 1000
    for topic, payload in file_messages(device_id, File(data, "image/png", "f.png"), None, 1000):
        hub.message(topic, payload)  # all queued before the worker starts: one batch
    corrupt = file_messages(device_id, File(b"x" * 3000, "image/png"), None, 1000)
    corrupt[2] = (corrupt[2][0], b"y" * 1000)
    for topic, payload in corrupt:
        hub.message(topic, payload)
    hub.message(f"ct/d/{device_id}/telemetry", json.dumps({"values": {"after": 1}}).encode())
    failures = []

    def fail_once(writes: BatchWrites, *args: object) -> None:
        failures.append(len(writes.samples))
        raise OperationalError("UPDATE devices ...", {}, Exception("disk I/O error"))  # a fault at the batch's end

    monkeypatch.setattr(BatchWrites, "write", fail_once)
    hub.start_worker()
    try:
        assert hub.flush()
    finally:
        hub.stop_worker()
    with ctx.db.read_session() as session:
        stored = [(row.sha256, row.size) for row in store.read_files(session, device_id)]
        letters = [(x.kind, x.reason.split(":")[0]) for x in deadletters.read(session, device_id=device_id)]
    assert failures == [1]  # the batch failed once; its messages were then stored one by one
    assert stored == [(hashlib.sha256(data).hexdigest(), len(data))]
    assert letters == [("invalid", "body.sha256")]  # the corrupt upload's one dead letter, kept too
    assert ctx.series.latest(name="iot.after", labels={"device": device_id})


# -- a real server and broker ---------------------------------------------------------------------------------


def test_bad_uploads_over_mqtt_are_dead_letters_and_the_next_file_is_stored(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data", env={"CT_IOT_FILE_MAX_BYTES": "20000", "CT_IOT_UPLOAD_IDLE_S": "1"})
    try:
        with srv.client() as admin:
            dev = admin.post("devices", {"name": "uploader"})
        client = DeviceClient(int(srv.env["CT_MQTT_PORT"]), dev["id"], dev["token"]).connect()

        def send(messages: list[tuple[str, bytes]]) -> None:
            for topic, payload in messages:
                client.client.publish(topic, payload, qos=1).wait_for_publish(10)

        corrupt = file_messages(dev["id"], File(DATA, "image/png"), None, 4096)
        corrupt[1] = (corrupt[1][0], b"!" * 4096)
        send(corrupt)
        send(file_messages(dev["id"], File(b"z" * 30_000, "image/png"), None, 8192))  # over 20,000
        stalled = file_messages(dev["id"], File(DATA, "image/png"), None, 4096)
        abandoned = stalled[0][0].rsplit("/", 1)[1]
        send(stalled[:2])  # then nothing: it expires
        good = file_messages(dev["id"], File(DATA + b"!", "text/plain", "ok.txt"), None, 4096)
        send(good)
        with srv.client() as admin:
            [stored] = wait_for(lambda: admin.get(f"devices/{dev['id']}/files"), message="the good file")
            letters = wait_for(lambda: len(x := admin.get("iot/dead-letters", device_id=dev["id"])) >= 3 and x,
                               message="dead letters")
        assert (stored["filename"], stored["sha256"]) == ("ok.txt", hashlib.sha256(DATA + b"!").hexdigest())
        assert sorted((x["kind"], x["reason"].split(":")[0]) for x in letters) == [
            ("incomplete", f"upload '{abandoned}'"), ("invalid", "body.sha256"), ("oversize", "body.size")]
        assert all(x["source"] == "mqtt" for x in letters)
        client.close()
    finally:
        srv.stop()
