from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from tenantgate.config import master_key_from
from tenantgate.errors import ConfigurationError, FailedPrecondition
from tenantgate.keywrap import MasterKey, generate_master_key_file, new_data_key


def test_wrap_round_trip_and_binding_to_tenant_and_purpose() -> None:
    master = MasterKey(os.urandom(32))
    material = new_data_key()
    wrapped = master.wrap(material, tenant_id="acme", purpose="data", version=1)
    assert material not in wrapped
    assert master.unwrap(wrapped, tenant_id="acme", purpose="data", version=1) == material
    for moved in ({"tenant_id": "globex", "purpose": "data", "version": 1},
                  {"tenant_id": "acme", "purpose": "backups", "version": 1},
                  {"tenant_id": "acme", "purpose": "data", "version": 2}):
        with pytest.raises(FailedPrecondition, match="does not unwrap"):
            master.unwrap(wrapped, **moved)  # type: ignore[arg-type]
    with pytest.raises(FailedPrecondition):
        MasterKey(os.urandom(32)).unwrap(wrapped, tenant_id="acme", purpose="data", version=1)


def test_master_key_sources(tmp_path: Path) -> None:
    path = tmp_path / "mk"
    generate_master_key_file(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(FileExistsError):
        generate_master_key_file(path)
    assert master_key_from(str(path), {}) is not None
    assert master_key_from("", {"TENANTGATE_MASTER_KEY_FILE": str(path)}) is not None
    inline = base64.b64encode(os.urandom(32)).decode()
    assert master_key_from("", {"TENANTGATE_MASTER_KEY": inline}) is not None
    assert master_key_from("", {}) is None
    assert "redacted" in repr(MasterKey(os.urandom(32)))


@pytest.mark.parametrize(("text", "message"), [("not base64!", "not valid base64"),
                                               (base64.b64encode(b"short").decode(), "must decode to 32 bytes")])
def test_bad_master_keys_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "mk"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=message):
        MasterKey.from_file(path)
    with pytest.raises(ConfigurationError, match="cannot read"):
        MasterKey.from_file(tmp_path / "missing")
