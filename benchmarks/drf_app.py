"""The peer users would otherwise pick: djangorestframework-api-key's ``HasAPIKey``.

One module is the whole Django project: settings in code, SQLite at the path in
``$BENCH_DRF_DATABASE``, one DRF view at ``/hello`` that only ``HasAPIKey``
guards. ``python -m benchmarks.drf_app KEYS`` migrates that database, creates
KEYS keys with ``APIKey.objects.create_key`` and prints the last one as JSON;
uvicorn serves the factory :func:`create_app` (ASGI), gunicorn :func:`create_wsgi_app`
(WSGI, sync workers: how Django is most often deployed).

The settings are the ones that favour the peer: no middleware, no
authentication classes, a JSON renderer only, and persistent database
connections, so each request pays for the key check and little else.
"""

import argparse
import importlib
import json
import os
import secrets
from typing import Any

DATABASE_VARIABLE = "BENCH_DRF_DATABASE"
PATH = "/hello"

urlpatterns: list[Any] = []  # this module is also the URLconf; filled by configure()


def _module(name: str) -> Any:
    # Django and DRF ship no type information, and come only with the `bench` extra.
    return importlib.import_module(name)


def hello(_request: Any) -> Any:
    return _module("rest_framework.response").Response({"hello": "world"})


def configure() -> None:
    """Configure Django once for this process and route ``PATH`` to :func:`hello`."""
    settings = _module("django.conf").settings
    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY=secrets.token_urlsafe(48),
        ALLOWED_HOSTS=["127.0.0.1"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["rest_framework", "rest_framework_api_key"],
        MIDDLEWARE=[],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": os.environ[DATABASE_VARIABLE],
                "CONN_MAX_AGE": None,
            }
        },
        REST_FRAMEWORK={
            "DEFAULT_AUTHENTICATION_CLASSES": [],
            "DEFAULT_PERMISSION_CLASSES": [],
            "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
            "UNAUTHENTICATED_USER": None,
        },
        USE_TZ=True,
    )
    _module("django").setup()
    decorators = _module("rest_framework.decorators")
    has_api_key = _module("rest_framework_api_key.permissions").HasAPIKey
    view = decorators.api_view(["GET"])(decorators.permission_classes([has_api_key])(hello))
    urlpatterns.append(_module("django.urls").path(PATH.lstrip("/"), view))


def create_app() -> Any:
    """The ASGI application, for ``uvicorn --factory``."""
    configure()
    return _module("django.core.asgi").get_asgi_application()


def create_wsgi_app() -> Any:
    """The WSGI application, for gunicorn (``benchmarks.drf_app:create_wsgi_app()``)."""
    configure()
    return _module("django.core.wsgi").get_wsgi_application()


def create_keys(count: int) -> str:
    """Migrate the database, create ``count`` keys in one transaction; the last key."""
    configure()
    _module("django.core.management").call_command("migrate", verbosity=0)
    api_key = _module("rest_framework_api_key.models").APIKey
    key = ""
    with _module("django.db").transaction.atomic():
        for index in range(count):
            _, key = api_key.objects.create_key(name=f"bench key {index:05d}")
    return key


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.drf_app", description=__doc__)
    parser.add_argument("keys", type=int, help="How many keys to create.")
    print(json.dumps({"key": create_keys(parser.parse_args().keys)}))


if __name__ == "__main__":
    main()
