"""Time in SQL: the schema stores timestamptz; the pipeline carries integer Unix microseconds."""

DAY_US = 86_400_000_000
EPOCH = "timestamptz '1970-01-01 00:00:00+00'"
TS = f"{EPOCH} + {{}} * interval '1 microsecond'"  # exact for |µs| < 2**53 (until year 2255)
