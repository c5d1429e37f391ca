"""Scenarios: workloads played on the model to show what a design does to them."""
