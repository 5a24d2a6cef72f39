"""Peer drivers: run by the peers' venv Python (`bench/.peers`), never importing beatd."""
