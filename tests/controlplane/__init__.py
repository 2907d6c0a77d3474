"""Control plane tier: tests against a real kube-apiserver, etcd, controller-manager, scheduler and KWOK."""
