"""didmos: identity management over OpenLDAP. This package is the plugin host."""

import pluggy

__version__ = "0.1.0"

#: Decorator for hook implementations: ``@hookimpl``, ``@hookimpl(tryfirst=True)``, ...
hookimpl = pluggy.HookimplMarker("didmos")

__all__ = ["hookimpl", "__version__"]
