"""Config, data, evaluation, search, comparison, plots and logging."""
