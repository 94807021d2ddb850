"""The hook-instrumented PyTorch runtime: plain PyTorch, no plotting, no UI."""
