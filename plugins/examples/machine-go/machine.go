// Command machine-go is the machine controller of samples/machine in Go, on the real Cluster
// API Machine (cluster.x-k8s.io/v1beta2). A Machine names its infrastructure object by
// reference, spec.infrastructureRef {apiGroup, kind, name}; the operator finds the version to
// read from the CRD's contract label, and the WasmController's contract reads the object's
// readiness from wherever its contract version keeps it (status.initialization.provisioned in
// v1beta2, status.ready in v1beta1). So this plugin only ever sees
// related.infrastructureRef.contract.ready and which path matched.
//
// It makes a bootstrap ConfigMap for the Machine and reports in the Machine's own status
// fields (the real schema keeps nothing else): phase (Pending without an infrastructure
// object, Provisioning until it is ready, Provisioned), initialization.infrastructureProvisioned,
// and the InfrastructureReady condition, whose message names the object, the version it was
// read at and the contract path. The logic is plain Go, tested natively (go test); the export
// lives in exports_wasip1.go.
package main

import (
	"wasmop.dev/plugins/go/wasmop"
)

// infra is the spec.related entry naming the infrastructure object.
const infra = "infrastructureRef"

// Cluster API's reasons for the InfrastructureReady condition (api/core/v1beta2).
const (
	reasonReady        = "Ready"
	reasonNotReady     = "NotReady"
	reasonDoesNotExist = "ObjectDoesNotExist"
)

func reconcile(req *wasmop.ReconcileRequest) (wasmop.ReconcileResponse, error) {
	return machine(req, wasmop.Now()), nil
}

// machine is reconcile at the time now (RFC 3339), so tests can fix the clock.
func machine(req *wasmop.ReconcileRequest, now string) wasmop.ReconcileResponse {
	name := req.Name()
	var out wasmop.ReconcileResponse

	related := req.Related[infra]
	ready, _ := wasmop.AsBool(req.Contract(infra).Get("ready"))
	infrastructure := ""
	phase, reason, message := "Pending", reasonDoesNotExist, "no infrastructure object"
	if related.Reason != nil {
		message = *related.Reason
	}
	if related.Object != nil {
		infrastructure = wasmop.Reference(related.Object)
		version, _ := wasmop.AsString(wasmop.Get(related.Object, "apiVersion"))
		path, ok := related.Matched["ready"]
		if !ok {
			path = "no contract path"
		}
		message = infrastructure + " (" + version + ", " + path + ")"
		phase, reason = "Provisioning", reasonNotReady
		if ready {
			phase, reason = "Provisioned", reasonReady
		}
	}

	out.PushChild(wasmop.NewChild("v1", "ConfigMap", name+"-bootstrap").
		Label("cluster.example.com/machine", name).
		Field("data", map[string]any{"machine": name, "infrastructure": infrastructure}))

	condition := wasmop.Condition{
		Type: "InfrastructureReady", Status: wasmop.StatusOf(ready), Reason: reason, Message: message,
	}
	was, _ := wasmop.AsBool(wasmop.Get(req.Object, "status", "initialization", "infrastructureProvisioned"))
	if ready && !was {
		out.Normal("InfrastructureReady", infrastructure+" is ready")
	}
	out.SetStatus(map[string]any{
		"phase":          phase,
		"initialization": map[string]any{"infrastructureProvisioned": ready},
		"conditions":     wasmop.Conditions(req, []wasmop.Condition{condition}, now),
	})
	return out
}

// main is required by the Go toolchain; the plugin runs through its exports.
func main() {}
