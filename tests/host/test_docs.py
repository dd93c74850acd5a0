"""The documentation keeps up with the code: every setting is in docs/settings.md."""

from pathlib import Path

import pytest

from didmos_host.config import flatten
from didmos_host.host import Host

ROOT = Path(__file__).resolve().parents[2]
HOST = Host.create()
KEYS = sorted({key for _, record in HOST.namespaces for key, _ in flatten(record.defaults, record.name + ".")})


@pytest.mark.parametrize("key", KEYS)
def test_every_setting_is_documented(key):
    namespace, _, rest = key.partition(".")
    text = (ROOT / "docs" / "settings.md").read_text()
    assert f"`{rest}`" in text or f"`{key}`" in text, f"docs/settings.md does not mention {key}"


@pytest.mark.parametrize("key", KEYS)
def test_every_setting_has_a_description(key):
    namespace, _, rest = key.partition(".")
    descriptions = {k for _, r in HOST.namespaces if r.name == namespace for k in r.descriptions}
    assert rest in descriptions, f"{key} has no description in its SettingsNamespace"
