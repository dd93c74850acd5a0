"""{{ cookiecutter.customer_name }}'s didmos plugin.

didmos loads :mod:`{{ cookiecutter.package_name }}.plugin` through the entry point
``{{ cookiecutter.plugin_name }}`` of the group ``didmos`` (pyproject.toml). Each module holds one kind of
override; ``plugin.py`` is the index of every hook the plugin implements.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("{{ cookiecutter.project_name }}")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
