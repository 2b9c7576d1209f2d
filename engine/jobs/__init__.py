"""The queue (SQLite), the worker daemon, job processes, enqueueing, the state folder, GPU stats."""
