"""The project's own package: settings, data model, events, logging, metrics, Kafka plumbing.

Services import from here; nothing here imports a service.
"""
