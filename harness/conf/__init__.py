"""The Hydra configs (a package so that `pkg://harness.conf` finds them on the probe's search path)."""
