"""The didmos_tasks plugin's hook implementations.

It implements no hooks yet: issue 7 builds asynchronous tasks: requests, approvals, lifecycle events, notifications here. The package and its entry point exist
so that installing, listing and disabling it already work.
"""
