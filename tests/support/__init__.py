"""Test support, not part of the product: a single-host harness for Flower and Ray.

``tests.support.fleet.Fleet`` starts a SuperLink, SuperNodes and Ray nodes on this
machine for the deployment, simulation and Ray-cluster tests; operators start the
same processes with the plain ``flower-superlink`` / ``flower-supernode`` commands in
deploy/README.md.
"""
