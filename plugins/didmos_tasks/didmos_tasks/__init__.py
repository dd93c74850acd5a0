"""didmos_tasks: asynchronous tasks: requests, approvals, lifecycle events, notifications."""

__version__ = "0.1.0"
