"""beatd: a periodic scheduler daemon (a beat service) for Python task queues."""

from beatd.config.pyfile import crontab

__all__ = ["crontab"]
