"""clipeval's runtime: datasets, preprocessing, onnxruntime sessions, kernels, metrics, tasks.

Never imports torch.
"""
