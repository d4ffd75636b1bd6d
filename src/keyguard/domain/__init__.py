"""The pure core of keyguard: key format, scopes, IP rules and route matching.

Nothing in this package performs I/O, reads settings or imports a framework, so
every rule here is a plain function or value object that tests in microseconds.
"""
