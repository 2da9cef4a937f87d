"""The Export pane: verified GGUF exports, Docker bundles for IT and portable model packages."""
