"""keyguard: self-hosted API keys with scopes and IP allow-lists.

Wire-compatible with Wavix's ``/v1/api-keys``, with a decision function fast
enough to sit in front of every request to a platform's API.
"""

__version__ = "0.1.0"

from keyguard.decide import Decider, Decision
from keyguard.middleware import KeyguardMiddleware

__all__ = ["Decider", "Decision", "KeyguardMiddleware", "__version__"]
