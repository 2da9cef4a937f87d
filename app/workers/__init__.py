"""The process boundary: start, watch and cancel job processes; the child entry point. No Qt."""
