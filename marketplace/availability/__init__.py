"""Availability: a car's taken time (bookings with their turnaround buffer, and blocks) and its rules (P-16)."""
