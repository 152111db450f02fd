"""What an operator reads in the service log about each flow: TaskFlow's own logging listener.

TaskFlow's DynamicLoggingListener logs every flow and atom transition (DEBUG; failures, retries
and reverts at WARNING, with the failed atom's inputs and traceback). Two things are added:
the live handles are masked in those input dumps (their reprs name the vCenter and would drag
session objects into the log), and the logger carries our redaction filter, so a lease URL or
cookie inside an exception text never reaches a handler.
"""

from __future__ import annotations

import logging

from taskflow.listeners import logging as tf_logging

from vsan_flows import names, redaction

#: The logger flows report on; operators raise it to DEBUG to see every transition.
FLOW_LOG = logging.getLogger("vsan_flows.flow")
redaction.guard_logger(FLOW_LOG)


class FlowLogger(tf_logging.DynamicLoggingListener):
    def __init__(self, engine) -> None:
        super().__init__(engine, log=FLOW_LOG, mask_inputs_keys=names.TRANSIENTS)
