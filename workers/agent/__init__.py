"""The ComputeMesh provider agent. Runs on providers' machines: it imports neither Django
nor the platform's packages and talks to the platform only through the agent protocol
(docs/agent-protocol.md) and plain HTTP."""

__version__ = "0.1.0"
