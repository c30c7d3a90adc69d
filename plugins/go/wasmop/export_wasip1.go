//go:build wasip1

package wasmop

import pdk "github.com/extism/go-pdk"

// Export runs h as an Extism export. Call it from a //go:wasmexport function:
//
//	//go:wasmexport reconcile
//	func exportReconcile() int32 { return wasmop.Export(reconcile) }
//
// On failure it sets the handler's error text as the call's error and returns ErrorCode.
func Export(h Handler) int32 {
	out, err := CallJSON(pdk.Input(), h)
	if err != nil {
		pdk.SetError(err)
		return ErrorCode
	}
	pdk.Output(out)
	return 0
}
