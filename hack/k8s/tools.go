//go:build tools

// Package tools keeps the control-plane commands in this module's graph, so `go mod tidy`
// records every module they need in go.sum and `go build k8s.io/kubernetes/cmd/...` builds
// them at the pinned versions. hack/build-control-plane.sh builds them; nothing imports this.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
