"""MFTJob operator: renders MFTJob custom resources into Kubeflow PyTorchJobs and reports their status."""

__version__ = "0.1.0"

API_GROUP = "mft.dev"
API_VERSION = "v1alpha1"
KIND = "MFTJob"
PLURAL = "mftjobs"
