"""Facts of the Wavix contract that tests assert against, written out once.

Deliberately literal rather than imported from keyguard: a test must fail if
keyguard's own idea of the contract drifts.
"""

# The 13 scope groups, in the order every key object lists them (spec §2).
GROUPS = (
    "numbers",
    "trunks",
    "calls",
    "messages",
    "recordings",
    "campaigns",
    "two_fa",
    "validator",
    "webhooks",
    "embeddable",
    "billing",
    "account",
    "subaccounts",
)
