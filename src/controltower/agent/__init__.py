"""The generic agent shell: enrolment, heartbeats, plug-in loading and the on-disk outbox."""
