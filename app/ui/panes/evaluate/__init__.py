"""The Evaluate & Arena pane: metric runs on datasets, and blind pairwise votes."""
