"""The didmos_scim plugin's hook implementations.

It implements no hooks yet: issue 5 builds the SCIM 2.0 API (/scim/v2 and the LUI2-compatible /lui2_backend/v2) here. The package and its entry point exist
so that installing, listing and disabling it already work.
"""
