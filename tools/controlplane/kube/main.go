// Command kube is a multi-call binary: kube-apiserver, kube-controller-manager and kube-scheduler built
// from k8s.io/kubernetes in one link, which is much faster to build than three separate binaries.
//
// The component is chosen by the program name (a symlink named kube-apiserver, ...) or, failing that, by
// the first argument: `kube apiserver --etcd-servers=...`.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func commandFor(name string) *cobra.Command {
	switch strings.TrimPrefix(name, "kube-") {
	case "apiserver":
		return apiserver.NewAPIServerCommand()
	case "controller-manager":
		return controllermanager.NewControllerManagerCommand()
	case "scheduler":
		return scheduler.NewSchedulerCommand()
	}
	return nil
}

func main() {
	args := os.Args[1:]
	cmd := commandFor(filepath.Base(os.Args[0]))
	if cmd == nil && len(args) > 0 {
		cmd = commandFor(args[0])
		args = args[1:]
	}
	if cmd == nil {
		fmt.Fprintln(os.Stderr, "usage: kube {apiserver|controller-manager|scheduler} [flags]")
		os.Exit(2)
	}
	cmd.SetArgs(args)
	os.Exit(cli.Run(cmd))
}
