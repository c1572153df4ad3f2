"""A local KubeRay: RayServices served on a local Ray Serve, RayJobs run as local processes.

`status` holds the pure part (the statuses KubeRay v1.7 writes), `entrypoints` runs RayJob
entrypoints, `serve` deploys serveConfigV2 applications, and `controller` watches the API
server and ties them together.
"""
