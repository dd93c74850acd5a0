"""didmos_scim: the SCIM 2.0 API (/scim/v2 and the LUI2-compatible /lui2_backend/v2)."""

__version__ = "0.1.0"
