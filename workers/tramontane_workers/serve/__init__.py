"""The Ray Serve application: one deployment per model, gRPC ingress, LoRA multiplexing."""
