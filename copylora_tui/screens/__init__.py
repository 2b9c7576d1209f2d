"""One module per screen: projects, project, queue, monitor, stats, and the dialogs."""
