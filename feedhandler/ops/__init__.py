"""Running feedhandler as a service: OS thread names and CPU affinity (threads), systemd
notification, watchdog and signals (service), Prometheus metrics and health (metrics), and the
version report (version)."""
