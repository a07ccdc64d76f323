"""The auditor's work (DESIGN §6): verify-archive, replay, rebuild, and their reports.

Uses every layer below it (wire, tlog, trust, kafka, store); nothing here is imported by
them.
"""
