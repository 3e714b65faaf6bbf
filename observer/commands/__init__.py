"""The bodies of ``observer run`` and ``observer dataplane`` (``observer report``'s is
``observer.report.command``, ``observer lab``'s ``observer.lab.command``): each takes the
settings the CLI made and returns the exit code."""
