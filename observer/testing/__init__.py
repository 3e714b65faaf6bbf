"""What the tests and the benchmarks share — fakes at process boundaries, scenarios, measuring
helpers — so that neither imports the other. Not part of the agent: the container image
leaves it out, as it does the lab."""
