"""The web dashboard over the store (``rankwatch ui``): jobs, a job's rank x step heatmaps and
curves, alerts with their evidence, and logs; read-only, live, bound to loopback by default."""
