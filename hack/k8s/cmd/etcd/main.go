// Command etcd is the etcd server at the version the pinned k8s.io/kubernetes release requires
// (go.etcd.io/etcd/server/v3 in this module's graph; hack/versions.env names it as ETCD_VERSION
// and hack/build-control-plane.sh checks the two agree).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
