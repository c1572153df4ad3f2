"""The chat layer shared by every engine: request encoding and validation, response assembly."""
