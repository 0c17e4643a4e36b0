"""prefmine's Ray Serve application: deployments and gRPC ingress (app.py), the `prefmine serve` runner (run.py),
a gRPC client (client.py) and a Serve config for `serve deploy` (config.yaml).

Submodules import Ray lazily where they can, so ``serve.client`` works without a Ray install.
"""
