"""The app's headless core: reading projects, the queue and log files, and turning
parameters into form fields. Nothing here imports Textual, so it is tested without a
terminal and the screens stay thin (as harlequin keeps its core apart from its widgets)."""
