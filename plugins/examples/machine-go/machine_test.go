package main

import (
	"testing"

	"wasmop.dev/plugins/go/wasmop"
)

func request(t *testing.T, related string) *wasmop.ReconcileRequest {
	t.Helper()
	input := `{"abiVersion":"1","controller":{"name":"machine","namespace":"team-a","config":null},
		"object":{"apiVersion":"cluster.example.com/v1beta2","kind":"Machine","metadata":{"name":"m"},"status":{}},
		"children":{},"related":{"infrastructureRef":` + related + `}}`
	req, err := wasmop.DecodeRequest([]byte(input))
	if err != nil {
		t.Fatal(err)
	}
	return &req
}

func TestPhaseFollowsTheContract(t *testing.T) {
	infra := `{"apiVersion":"infra.example.com/v1beta2","kind":"CloudMachine","metadata":{"name":"c"}}`
	cases := []struct {
		related, phase string
		ready          bool
	}{
		{`{"object":null,"objects":[],"contract":{},"missing":["ready"],"reason":"spec.infrastructureRef is not set"}`, "Pending", false},
		{`{"object":` + infra + `,"objects":[],"contract":{},"missing":["ready"]}`, "Provisioning", false},
		{`{"object":` + infra + `,"objects":[],"contract":{"ready":true},"missing":[],"matched":{"ready":"$.status.initialization.provisioned"}}`, "Running", true},
	}
	for _, c := range cases {
		out, err := reconcile(request(t, c.related))
		if err != nil {
			t.Fatal(err)
		}
		status := out.Status.(map[string]any)
		if status["phase"] != c.phase || status["infrastructureReady"] != c.ready {
			t.Errorf("%s: got %v", c.related, status)
		}
		if len(out.Children) != 1 {
			t.Errorf("one bootstrap ConfigMap, got %v", out.Children)
		}
	}
}
