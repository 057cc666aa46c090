"""Folders, files and the file tools through the official `letta-client`."""

import io
import time

import httpx
import pytest
from letta_client import APIStatusError, NotFoundError

PROCESSING_TIMEOUT_S = 30
# More than the 50 files of a folder the prompt names (PROMPT_FOLDER_FILES_COUNT_MAX).
FILES_COUNT = 57


def _pdf(pages):
    """A minimal PDF with one Helvetica text page per entry (our own writer)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", None, b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for text in pages:
        stream = b"BT /F1 12 Tf 72 720 Td (" + text.encode() + b") Tj ET"
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        content_id = len(objects)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
            b"/Resources << /Font << /F1 3 0 R >> >> >>" % content_id
        )
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % k for k in kids) + b"] /Count %d >>" % len(kids)
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def _wait_done(client, folder_id, file_id):
    deadline = time.monotonic() + PROCESSING_TIMEOUT_S
    while time.monotonic() < deadline:
        file = client.folders.files.retrieve(file_id, folder_id=folder_id)
        if file.processing_status in ("completed", "error"):
            return file
        time.sleep(0.05)
    raise AssertionError(f"file {file_id} still {file.processing_status}")


def _say(client, agent_id, text):
    reply = client.agents.messages.create(agent_id=agent_id, messages=[{"role": "user", "content": text}])
    returns = [m for m in reply.messages if m.message_type == "tool_return_message"]
    assert len(returns) == 1, reply.messages
    return returns[0]


def test_upload_attach_search_open_detach_delete(client, kelpie_url):
    folder = client.folders.create(name="py-manuals", description="Product manuals")
    assert folder.id.startswith("source-") and folder.name == "py-manuals"
    assert folder.embedding_config.embedding_dim > 0

    uploads = {
        "notes.txt": (b"Kelpie runs agents as virtual actors.\nThe launch code is pineapple.\n", "text/plain"),
        "guide.md": (b"# Guide\n\nFerrets sleep eighteen hours a day.\n", "text/markdown"),
        "report.pdf": (_pdf(["Quarterly revenue grew by walrus percent", "Second page of the report"]), "application/pdf"),
    }
    files = {}
    for name, (content, mime) in uploads.items():
        uploaded = client.folders.files.upload(folder.id, file=(name, content, mime))
        assert uploaded.file_name == f"py-manuals/{name}"
        assert uploaded.processing_status in ("pending", "parsing", "embedding", "completed")
        assert uploaded.file_size == len(content)
        files[name] = _wait_done(client, folder.id, uploaded.id)
    for name, file in files.items():
        assert file.processing_status == "completed", (name, file.error_message)
        assert file.total_chunks >= 1 and file.chunks_embedded == file.total_chunks
    assert files["report.pdf"].file_type == "application/pdf"
    pdf = client.folders.files.retrieve(files["report.pdf"].id, folder_id=folder.id, include_content=True)
    assert "walrus" in pdf.content and "Second page" in pdf.content

    listed = list(client.folders.files.list(folder.id, limit=2))
    assert sorted(f.file_name for f in listed) == sorted(uploads)
    # letta-client 1.x has no method for these two; the routes are Letta's.
    passages = httpx.get(f"{kelpie_url}/v1/folders/{folder.id}/passages").json()
    assert any("pineapple" in p["text"] for p in passages)
    assert {p["file_id"] for p in passages} == {f.id for f in files.values()}
    assert all(p["file_name"].startswith("py-manuals/") for p in passages)

    agent = client.agents.create(name="py-reader", model="openai-proxy/fake-gpt")
    attached = client.agents.folders.attach(folder.id, agent_id=agent.id)
    tool_names = {t.name for t in attached.tools}
    assert {"open_files", "grep_files", "semantic_search_files"} <= tool_names
    assert [s.id for s in client.agents.folders.list(agent.id)] == [folder.id]
    agent_files = list(client.agents.files.list(agent.id, limit=2))
    assert sorted(f.file_name for f in agent_files) == sorted(f"py-manuals/{n}" for n in uploads)
    assert all(f.is_open for f in agent_files)

    grep = _say(client, agent.id, '/call grep_files {"pattern": "launch code"}')
    assert grep.status == "success"
    assert "Found 1 total matches across 1 files" in grep.tool_return
    assert "> 2: The launch code is pineapple." in grep.tool_return

    search = _say(client, agent.id, '/call semantic_search_files {"query": "ferrets sleep", "limit": 1}')
    assert search.status == "success"
    assert "=== py-manuals/guide.md (passage #1) ===" in search.tool_return
    assert "Ferrets sleep eighteen hours" in search.tool_return

    opened = _say(
        client,
        agent.id,
        '/call open_files {"file_requests": [{"file_name": "py-manuals/notes.txt", "offset": 1, "length": 1}]}',
    )
    assert opened.tool_return.startswith("* Opened py-manuals/notes.txt (lines 2-2)"), opened.tool_return
    notes = [f for f in client.agents.files.list(agent.id) if f.file_id == files["notes.txt"].id][0]
    assert (notes.is_open, notes.start_line, notes.end_line) == (True, 2, 2)
    assert notes.visible_content == "[Viewing lines 2 to end (out of 2 lines)]\n2: The launch code is pineapple."

    missing = _say(client, agent.id, '/call open_files {"file_requests": [{"file_name": "py-manuals/nope.txt"}]}')
    assert missing.status == "error"
    assert "`py-manuals/nope.txt` not attached" in missing.tool_return

    closed = client.agents.files.close_all(agent.id)
    assert sorted(closed) == sorted(f"py-manuals/{n}" for n in uploads)
    assert not any(f.is_open for f in client.agents.files.list(agent.id))
    assert client.agents.files.open(files["guide.md"].id, agent_id=agent.id) == []
    assert [f.file_id for f in client.agents.files.list(agent.id, is_open=True)] == [files["guide.md"].id]

    # A copy made by export and import is attached to nothing.
    exported = client.agents.export_file(agent.id)
    copy_id = client.agents.import_file(file=("agent.json", exported.encode(), "application/json")).agent_ids[0]
    assert client.agents.retrieve(copy_id).sources == []
    assert list(client.agents.files.list(copy_id)) == []
    assert httpx.get(f"{kelpie_url}/v1/folders/{folder.id}/agents").json() == [agent.id]

    detached = client.agents.folders.detach(folder.id, agent_id=agent.id)
    assert not {"open_files", "grep_files", "semantic_search_files"} & {t.name for t in detached.tools}
    assert list(client.agents.files.list(agent.id)) == []

    client.folders.files.delete(files["notes.txt"].id, folder_id=folder.id)
    with pytest.raises(NotFoundError):
        client.folders.files.retrieve(files["notes.txt"].id, folder_id=folder.id)
    client.folders.delete(folder.id)
    with pytest.raises(NotFoundError):
        client.folders.retrieve(folder.id)


def test_uploads_refuse_bad_types_and_handle_duplicates(client, kelpie_url):
    folder = client.folders.create(name="py-dupes")
    with pytest.raises(APIStatusError) as refused:
        client.folders.files.upload(folder.id, file=("tool.exe", b"MZ\x00\x01", "application/octet-stream"))
    assert refused.value.status_code == 415
    assert "tool.exe" in refused.value.response.json()["detail"]

    first = client.folders.files.upload(folder.id, file=("a.txt", b"one", "text/plain"))
    second = client.folders.files.upload(folder.id, file=("a.txt", b"two", "text/plain"))
    assert (first.file_name, second.file_name) == ("py-dupes/a.txt", "py-dupes/a_(1).txt")
    skipped = httpx.post(
        f"{kelpie_url}/v1/folders/{folder.id}/upload",
        params={"duplicate_handling": "skip"},
        files={"file": ("a.txt", b"three", "text/plain")},
    )
    assert skipped.status_code == 200 and skipped.headers["x-upload-result"] == "skipped"
    assert skipped.json()["id"] == first.id
    with pytest.raises(APIStatusError) as duplicate:
        client.folders.files.upload(folder.id, file=("a.txt", b"four", "text/plain"), duplicate_handling="error")
    assert duplicate.value.status_code in (400, 422)

    binary = client.folders.files.upload(folder.id, file=("bad.txt", b"abc\xff\xfe", "text/plain"))
    bad = _wait_done(client, folder.id, binary.id)
    assert bad.processing_status == "error"
    assert "not UTF-8 text at byte 3" in bad.error_message
    assert client.folders.files.list(folder.id).items[0].processing_status in ("completed", "error")


def test_a_folder_of_many_files_pages_to_the_end(client, kelpie_url):
    folder = client.folders.create(name="py-many")
    ids = []
    for n in range(FILES_COUNT):
        uploaded = client.folders.files.upload(folder.id, file=(f"f{n:02}.txt", f"file number {n}".encode(), "text/plain"))
        ids.append(uploaded.id)
    for file_id in ids:
        assert _wait_done(client, folder.id, file_id).processing_status == "completed"
    paged = [f.id for f in client.folders.files.list(folder.id, limit=5, order="asc")]
    assert paged == ids
    agent = client.agents.create(name="py-many-reader", model="openai-proxy/fake-gpt")
    client.agents.folders.attach(folder.id, agent_id=agent.id)
    through_pager = [f.file_id for f in client.agents.files.list(agent.id, limit=4)]
    assert sorted(through_pager) == sorted(ids)
    # Opened at attach up to the agent's limit (5 for a 32k window), no more.
    assert len(list(client.agents.files.list(agent.id, is_open=True))) == 5
    # The prompt names the first 50 files (5 open, 45 closed) and counts the rest.
    # (letta-client 1.x has no method for Letta's context route.)
    directories = httpx.get(f"{kelpie_url}/v1/agents/{agent.id}/context").json()["directories"]
    assert directories.count('<file status="open"') == 5
    assert directories.count('<file status="closed"') == 45
    assert f'<more_files count="{FILES_COUNT - 50}">' in directories
    # The agent's own limit of open files, at create and after a change.
    small = client.agents.create(name="py-small-reader", model="openai-proxy/fake-gpt", max_files_open=3)
    assert small.max_files_open == 3
    client.agents.folders.attach(folder.id, agent_id=small.id)
    assert len(list(client.agents.files.list(small.id, is_open=True))) == 3
    assert client.agents.update(small.id, max_files_open=2).max_files_open == 2
    assert len(list(client.agents.files.list(small.id, is_open=True))) == 2
    with pytest.raises(APIStatusError) as refused:
        client.agents.update(small.id, max_files_open=0)
    assert refused.value.status_code == 422
    metadata = httpx.get(
        f"{kelpie_url}/v1/folders/metadata", params={"include_detailed_per_source_metadata": "true"}
    ).json()
    mine = [s for s in metadata["sources"] if s["source_id"] == folder.id][0]
    assert mine["file_count"] == FILES_COUNT and len(mine["files"]) == FILES_COUNT
    assert httpx.get(f"{kelpie_url}/v1/folders/count").json() == metadata["total_sources"]
