"""`observer report`: measurements in, per-workload preStop advice out."""
