"""Samplers, schedules, expert switching and conditioning (see the sampling issue)."""
