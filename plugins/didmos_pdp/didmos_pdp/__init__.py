"""didmos_pdp: role-based access control: the policy decision point."""

__version__ = "0.1.0"
