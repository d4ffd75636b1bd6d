"""keyguard: self-hosted API keys with scopes and IP allow-lists.

Wire-compatible with Wavix's ``/v1/api-keys``, with a decision function fast
enough to sit in front of every request to a platform's API. The names below
are what an app that embeds keyguard imports (README: "In-process: ASGI
middleware")::

    from keyguard import Decision, Keyguard, KeyguardMiddleware, Settings
"""

__version__ = "0.1.0"

from keyguard.config import Settings
from keyguard.decide import Decision
from keyguard.middleware import KeyguardMiddleware
from keyguard.runtime import Keyguard

__all__ = ["Decision", "Keyguard", "KeyguardMiddleware", "Settings", "__version__"]
