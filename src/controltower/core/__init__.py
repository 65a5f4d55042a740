"""The core services every subsystem builds on: db, auth, blobs, series, events, actions, work, scheduler."""
