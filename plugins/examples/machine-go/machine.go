// Command machine-go is the machine controller of samples/machine in Go: a Cluster-API-style
// Machine names its infrastructure object by reference (spec.infrastructureRef); the
// WasmController's contract reads that object's readiness from wherever its contract version
// keeps it (status.initialization.provisioned in v1beta2, status.ready in v1beta1), so this
// plugin only ever sees related.infrastructureRef.contract.ready and which path matched.
//
// It makes a bootstrap ConfigMap for the Machine and reports in status: phase (Pending
// without an infrastructure object, Provisioning until it is ready, Running), the
// infrastructure object, its readiness and the contract path it was read from. The logic is
// plain Go, tested natively (go test); the export lives in exports_wasip1.go.
package main

import (
	"wasmop.dev/plugins/go/wasmop"
)

// infra is the spec.related entry naming the infrastructure object.
const infra = "infrastructureRef"

func reconcile(req *wasmop.ReconcileRequest) (wasmop.ReconcileResponse, error) {
	name := req.Name()
	var out wasmop.ReconcileResponse

	related := req.Related[infra]
	ready, _ := wasmop.AsBool(req.Contract(infra).Get("ready"))
	infrastructure := ""
	if related.Object != nil {
		infrastructure = wasmop.Reference(related.Object)
	}
	phase := "Pending"
	switch {
	case related.Object == nil:
	case ready:
		phase = "Running"
	default:
		phase = "Provisioning"
	}

	out.PushChild(wasmop.NewChild("v1", "ConfigMap", name+"-bootstrap").
		Label("cluster.example.com/machine", name).
		Field("data", map[string]any{"machine": name, "infrastructure": infrastructure}))

	status := map[string]any{
		"phase":               phase,
		"infrastructure":      infrastructure,
		"infrastructureReady": ready,
	}
	if path, ok := related.Matched["ready"]; ok {
		status["contractPath"] = path
	}
	if related.Reason != nil {
		status["waitingFor"] = *related.Reason
	}
	was, _ := wasmop.AsBool(req.Status().Get("infrastructureReady"))
	if ready && !was {
		out.Normal("InfrastructureReady", infrastructure+" is ready")
	}
	out.SetStatus(status)
	return out, nil
}

// main is required by the Go toolchain; the plugin runs through its exports.
func main() {}
