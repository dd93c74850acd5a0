"""didmos_auth: who is asking. HTTP Basic against the directory (OpenID Connect to come)."""

__version__ = "0.1.0"
