"""Ray wiring: Ray Train + DeepSpeed jobs, RLlib jobs, the pipeline and the `prefmine` command line."""
