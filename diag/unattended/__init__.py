"""What a cron run adds around the engine (ARCHITECTURE §8): a lock per job against overlapping runs, the
outputs, the history and the notification.

``diag check`` maps its options onto one :class:`CheckRequest` and hands it to :func:`execute`, which returns
the exit code::

    request = CheckRequest(("contoso.com",), default_registry(), RunOptions(),
                           outputs=Outputs(json="/var/lib/diag/contoso.json", view=View.NAGIOS))
    sys.exit(execute(request))

Modules: ``job`` (which job a run is, hence its lock), ``outputs`` (files and the view on stdout),
``notification`` (mail and webhook) and ``run`` (the request and :func:`execute`). Heavy modules (the engine,
the renderers, the SMTP client) are imported when used, so that the command line starts at once.
"""

from diag.unattended.job import Job
from diag.unattended.notification import Notification
from diag.unattended.outputs import Outputs, View, write_output
from diag.unattended.run import CheckRequest, execute, job_lock

__all__ = ["CheckRequest", "Job", "Notification", "Outputs", "View", "execute", "job_lock", "write_output"]
