// Command etcd is the etcd server, built from the Go module proxy (no etcd release of the right version is
// packaged for Debian).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
