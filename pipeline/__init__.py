"""The deployed system: new images -> OOD filter -> one classifier -> top-2 -> one prediction table.

Batch mode (`python -m pipeline predict`) on one machine; queue mode (`produce` / `consume`) on
Redis Streams for scale-out (deploy/ holds the Kubernetes + KEDA manifests). See pipeline/cli.py.
"""
