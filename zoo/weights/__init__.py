"""Where weights come from: download and cache, the pinned Hub revision, rebuilding from the upstream ONNX."""
