"""Cost metrics: analytic (params, MACs, peak memory) now; latency models later."""
