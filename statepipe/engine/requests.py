"""The control requests a run's owner carries out (Store.request leaves them on the run)."""

CANCEL_REQUESTS = ("cancel", "cancel_compensate")
PAUSE_REQUESTS = ("pause", "pause_now")
RETRY_REQUEST = "retry"  # batch: a failed run a worker takes up again, its failed steps re-run
