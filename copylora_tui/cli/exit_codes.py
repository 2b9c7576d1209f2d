"""The CLI's exit statuses, in one place (README's CLI reference lists them).

0 done; 1 the work failed (a :class:`engine.errors.CopyloraError`, or a bug); 2 bad input the
user can fix (usage or validation, a LoRA file or base model that cannot be used); 130 interrupted by Ctrl-C (128 + SIGINT, as shells report
it), after whatever could be kept was saved."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130
