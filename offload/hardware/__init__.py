"""What this machine has: one small module per kind of device. Probes never raise."""
