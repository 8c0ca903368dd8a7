"""Tester result files (ICT, flying probe, functional test) -> `unit_tested` events. See README.md."""
