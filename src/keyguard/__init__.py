"""keyguard: self-hosted API keys with scopes and IP allow-lists.

Wire-compatible with Wavix's ``/v1/api-keys``, with a decision function fast
enough to sit in front of every request to a platform's API. The names below
are what an app that embeds keyguard imports (README: "In-process: ASGI
middleware")::

    from keyguard import Decision, Keyguard, KeyguardMiddleware, Settings

``Keyguard`` and ``Settings`` are loaded when first used: an app that imports
only the middleware does not load the database layer or the management service.
"""

from typing import TYPE_CHECKING, Any

from keyguard.decide import Decision
from keyguard.middleware import KeyguardMiddleware

if TYPE_CHECKING:
    from keyguard.config import Settings
    from keyguard.runtime import Keyguard

__version__ = "0.1.0"
__all__ = ["Decision", "Keyguard", "KeyguardMiddleware", "Settings", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Keyguard":
        from keyguard.runtime import Keyguard

        return Keyguard
    if name == "Settings":
        from keyguard.config import Settings

        return Settings
    raise AttributeError(f"module 'keyguard' has no attribute {name!r}")
