"""prefmine's Ray Serve application: the app builder (app.py), its
deployments (deployments/) and gRPC ingress (ingress.py), the `prefmine serve` runner (run.py),
a gRPC client (client.py) and a Serve config for `serve deploy` (config.yaml).

Submodules import Ray lazily where they can, so ``serve.client`` works without a Ray install.
"""
