"""Walle: a small data-center operating system built on Ansible, systemd and Consul."""

__version__ = "0.1.0"
