"""Tramontane operator: Kopf handlers reconciling tramontane.dev resources into KubeRay pools."""
