"""The background worker process: claims jobs from the queue (``db.jobs``) and runs them with the engine."""
