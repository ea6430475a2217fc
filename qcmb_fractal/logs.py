"""One log format for the driver and every worker, so each record names the process it came from."""

LOG_FORMAT = "%(asctime)s %(processName)s %(levelname)s %(name)s: %(message)s"
