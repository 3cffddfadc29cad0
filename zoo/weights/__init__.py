"""Where weights come from: download and cache, the pinned Hub revision, rebuilding from the upstream ONNX (and
the entry-to-module conversion the build shares), reading ``hf-hub:`` repositories."""
