"""Local mode: the whole control plane on one machine.

An emulated Kubernetes API server (`apiserver`, on the `kube_emulator`), a KubeRay controller
running RayServices on Ray Serve and RayJobs as local processes (`kuberay`), and the process
that runs them beside the real operator and router (`up`).
"""
