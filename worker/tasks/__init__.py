"""The job's three tasks: ``run_job`` fans out one ``generate_variation`` per
image in a chord whose body, ``finalize``, writes the result document."""
