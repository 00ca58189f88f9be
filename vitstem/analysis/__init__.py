"""Turning a sweep folder into tables, error EDFs, plots and a report."""
