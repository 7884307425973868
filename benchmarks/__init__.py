"""Speed and latency measurements, run by hand; figures are ratios against a baseline
measured in the same run, because the machines they run on are shared and noisy."""
