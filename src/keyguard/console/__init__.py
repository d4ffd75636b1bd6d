"""The tenant web console at ``/console/``: keys and their audit trail in a browser.

:func:`console_router` serves the pages, :func:`console_link_router` the
operator's one-time sign-in links; :func:`open_sessions` gives them a session
store beside the key store. The app factory composes them (see
``keyguard.api.app.create_app``); the console changes keys only through
:class:`~keyguard.service.KeyService`.
"""

from keyguard.console.routes import Console, console_link_router, console_router
from keyguard.console.sessions import SessionStore, open_sessions

__all__ = ["Console", "SessionStore", "console_link_router", "console_router", "open_sessions"]
