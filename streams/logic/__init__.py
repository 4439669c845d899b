"""Engine-independent stream logic: plain Python, no Kafka, so the engine can be swapped and the
rules are testable in isolation. ``processor.Processor`` ties the pieces together."""
