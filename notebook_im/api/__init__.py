"""The public face: Platform, Endpoint, SessionManager, ImSession, Participant and the events."""
