"""The didmos_pdp plugin's hook implementations.

It implements no hooks yet: issue 4 builds role-based access control: the policy decision point here. The package and its entry point exist
so that installing, listing and disabling it already work.
"""
