"""The Datasets pane: a virtual table over Arrow, edits saved as versions, preparation steps."""
