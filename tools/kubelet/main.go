// Command kubelet is the upstream kubelet from k8s.io/kubernetes, built by scripts/build-node.sh for the
// dev cluster's real nodes (KUBELET_NODES=N). There is no kubelet in Debian or PyPI and no download outside
// the package registries, so it is linked from the Go module proxy like the control plane
// (tools/controlplane/kube), at the same pinned version (tools/controlplane/versions.env).
package main

import (
	"context"
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	os.Exit(cli.Run(kubelet.NewKubeletCommand(context.Background())))
}
