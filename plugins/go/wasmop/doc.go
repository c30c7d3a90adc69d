// Package wasmop writes wasmop plugins in Go: the ABI types (abi_gen.go, generated from the
// Rust ABI by wasmop-schema) and small helpers mirroring the Rust PDK (wasmop-pdk).
//
// A plugin is one plain function,
//
//	func reconcile(req *wasmop.ReconcileRequest) (wasmop.ReconcileResponse, error)
//
// tested natively with go test (feed it a request, or feed CallJSON the bytes the host would
// send), and exported to the Extism host only in the wasm build (a file with
// //go:build wasip1):
//
//	//go:wasmexport reconcile
//	func exportReconcile() int32 { return wasmop.Export(reconcile) }
//
// Build with standard Go:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -ldflags="-s -w" -o plugin.wasm .
//
// Reading: req.Spec(), req.Config(), req.Child(...), req.Existing(...), req.Contract(...)
// return Fields, whose typed getters report errors naming the field
// ("spec.replicas must be a non-negative integer"); Get/AsString/AsUint64 read leniently.
// Writing: NewChild builds objects; resp.PushChild, SetStatus, Normal, Warning fill the
// response; Conditions keeps lastTransitionTime stable so a steady state writes nothing.
//
// Marshal (used by every generated type) writes the JSON serde_json writes for the Rust
// types: fields in Rust declaration order, maps with sorted keys, no HTML escaping, [] rather
// than null for always-present lists. So a Go plugin's response is byte-for-byte a Rust
// plugin's, given the same logic. Numbers in requests decode as json.Number (DecodeRequest),
// so large integers and "2.0" keep their exact meaning.
package wasmop
