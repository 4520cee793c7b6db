"""The study's configuration: its JSON schema and defaults, the config a run planned (runconfig) and how a rule's job starts (job.run_main)."""
