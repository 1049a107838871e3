"""Export a trained model for other runtimes (ONNX), check it, and run an exported file with onnxruntime."""
