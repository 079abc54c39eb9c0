"""coursehub's dev-only tooling: the local control plane, a local OCI registry, the demo.

Not part of the operator's wheel or image; `coursehub-dev up|down|env|build|demo` is its command.
"""
