"""Error messages a newcomer meets: each says what is wrong, where, and what to do."""

from __future__ import annotations

import logging
import os
import stat

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


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_an_unwritable_local_folder_names_the_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(CredentialsError) as e:
            check_writable(str(ro / "out"))
        assert f"the folder {ro}" in str(e.value) and "credentials" not in str(e.value)
    finally:
        os.chmod(ro, stat.S_IRWXU)


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
