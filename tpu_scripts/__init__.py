"""Launch scripts for Cloud TPU VMs / pods and one GPU (stdlib only); see README.md."""
