"""Helpers shared by the test suites: real servers, processes, waiting on conditions."""
