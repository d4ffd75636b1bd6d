"""What every benchmark of one run shares: the load generator and the sizes asked for."""

from dataclasses import dataclass

from benchmarks.load import LoadGenerator


@dataclass(frozen=True, slots=True)
class Context:
    generator: LoadGenerator
    workers: int  # `keyguard serve --workers`
    keys: int  # keys to create where a benchmark needs many
    seconds: float  # length of one load round
