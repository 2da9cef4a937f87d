"""Facts about this machine: hardware, processes, versions."""
