"""Process entry of `infero llm`: logging, then the `Connector` until it leaves."""

from __future__ import annotations

import logging

from infero.common.buildinfo import BUILD
from infero.common.process import run_until_exit, start_logging
from infero.worker.runtime import COMPONENT, Connector
from infero.worker.settings import WorkerSettings
from infero.worker.statusport import LOG_FILE

logger = logging.getLogger(__name__)


def run_worker(settings: WorkerSettings, *, config_path: str | None) -> int:
    """Run the connector until it leaves; returns the process exit code."""
    start_logging(settings, LOG_FILE)
    logger.info("%s", BUILD.line(COMPONENT))
    return run_until_exit(Connector(settings, config_path=config_path), "connector")
