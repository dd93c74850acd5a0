"""An extra ``didmos`` command: ``didmos {{ cookiecutter.plugin_name|replace('_', '-') }}-devices``."""

from __future__ import annotations

import json

import click

from didmos_host.cli import fail_cleanly
from didmos_host.host import Host


@click.command("{{ cookiecutter.plugin_name|replace('_', '-') }}-devices")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@fail_cleanly  # a DidmosError (directory unreachable, bad settings) prints one line and exits 2
def devices(as_json: bool) -> None:
    """List the devices, their serial numbers and owners (from the directory, as the service account)."""
    host = Host.create()  # the settings of /etc/didmos, DIDMOS_SETTINGS_FILES and DIDMOS_* variables
    directory = host.service("directory")
    rows = []
    found = directory.search(host.settings.{{ cookiecutter.plugin_name }}.devices_dn, "(objectClass=device)",
                             attrs=["cn", "serialNumber", "owner", "didmosUUID"])
    for entry in sorted(found, key=lambda e: e.first("cn") or ""):
        owners = [directory.get(dn, ["uid"]) for dn in entry.values("owner")]
        rows.append({"id": entry.first("didmosUUID"), "name": entry.first("cn"),
                     "serialNumber": entry.first("serialNumber"),
                     "owners": [owner.first("uid") for owner in owners if owner is not None]})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['name']}  {row['serialNumber'] or '-'}  {', '.join(row['owners']) or '(unassigned)'}")
