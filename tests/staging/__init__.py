"""Tests of the staging package."""
