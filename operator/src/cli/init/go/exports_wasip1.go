//go:build wasip1

package main

import "wasmop.dev/plugins/go/wasmop"

// The Extism export. Standard Go (1.24+) exports functions with //go:wasmexport when built
// with -buildmode=c-shared.

//go:wasmexport reconcile
func exportReconcile() int32 { return wasmop.Export(reconcile) }
