"""Error messages a newcomer meets: each says what is wrong, where, and what to do."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile

import pytest

import wdstream
from wdstream.cli import main
from wdstream.errors import CredentialsError, HubUnreachableError, SourceError
from wdstream.storage import check_writable, translate_error
from wdstream.write.convert import convert


def test_a_local_permission_error_speaks_of_the_folder(tmp_path):
    err = translate_error(
        PermissionError(13, "Permission denied"), str(tmp_path / "out" / "manifest.json"), "write"
    )
    text = str(err)
    assert isinstance(err, CredentialsError)
    assert f"write to the folder {tmp_path}" in text and "credentials" not in text
    s3 = translate_error(PermissionError(13, "denied"), "s3://b/p/x", "write")
    assert "credentials' permissions for this bucket/prefix" in str(s3)


def test_an_unwritable_local_folder_names_the_folder(tmp_path):
    """A folder nobody may write into. Root may write anywhere, so as root (CI) the check runs
    in a forked child that has dropped to the user ``nobody`` (no exec: the interpreter may
    live under /root, which nobody can read; what the check imports is loaded first)."""
    check_writable(str(tmp_path / "warm"))  # loads what check_writable imports
    base = tempfile.mkdtemp(prefix="wdstream-ro-")  # not under tmp_path: root-only (0700)
    ro = os.path.join(base, "ro")
    os.mkdir(ro)
    os.chmod(base, 0o755)
    os.chmod(ro, 0o555)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the error's type and text through the pipe, then exit
        os.close(read_end)
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            try:
                check_writable(os.path.join(ro, "out"))
                text = "no error"
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"
            os.write(write_end, text.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as f:
            out = f.read().decode()
        os.waitpid(pid, 0)
        kind, _, message = out.partition(": ")
        assert kind == "CredentialsError", out
        assert f"the folder {ro}" in message and "credentials" not in message
    finally:
        os.chmod(ro, stat.S_IRWXU)
        shutil.rmtree(base, ignore_errors=True)


def test_a_missing_manifest_says_so_once_and_what_to_do(tmp_path):
    with pytest.raises(SourceError) as e:
        wdstream.make_loader(str(tmp_path / "nothing"), wdstream.Config(num_workers=0))
    text = str(e.value)
    assert text.startswith(f"no wdstream manifest at {tmp_path}/nothing/manifest.json")
    assert text.count("does not exist") == 1 and "cannot read" not in text
    assert "wdstream convert" in text and "wdstream index" in text and "shard URLs" in text


def test_a_hub_id_close_to_a_local_folder_mentions_the_folder(tmp_path, monkeypatch):
    (tmp_path / "my_dataset").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        HubUnreachableError,
        match=r"Did you mean the local folder "
        r"'./my_dataset'\?",
    ):
        convert("my_datset", str(tmp_path / "out"), workers=1, quiet=True)
    with pytest.raises(HubUnreachableError, match="local folder 'data/my_dataset'"):
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "my_dataset").mkdir()
        convert("data/my_datset", str(tmp_path / "out"), workers=1, quiet=True)


def test_an_unknown_registry_name_is_an_error_not_a_hub_lookup(tmp_path, monkeypatch, caplog):
    reg = tmp_path / "reg.yaml"
    reg.write_text(
        "datasets:\n  open_platypus:\n    hub_id: garage-bAInd/Open-Platypus\n"
        "    task_types: [code]\n    text_template: '{instruction}'\n"
    )
    (tmp_path / "my_dataset").mkdir()
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.ERROR):
        assert main(["convert", "open_platypu", "out", "--registry", str(reg)]) == 2
        assert main(["convert", "my_datset", "out", "--registry", str(reg)]) == 2
    text = caplog.text
    assert "'open_platypu' is not a dataset of" in text and "Did you mean 'open_platypus'?" in text
    assert "A local folder './my_dataset' exists" in text
    assert "cannot reach the Hugging Face Hub" not in text
    assert not (tmp_path / "out").exists()
