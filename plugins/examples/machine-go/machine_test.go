package main

import (
	"strings"
	"testing"

	"wasmop.dev/plugins/go/wasmop"
)

const now = "2026-12-06T00:00:00Z"

func request(t *testing.T, status, related string) *wasmop.ReconcileRequest {
	t.Helper()
	input := `{"abiVersion":"1","controller":{"name":"machine","namespace":"team-a","config":null},
		"object":{"apiVersion":"cluster.x-k8s.io/v1beta2","kind":"Machine","metadata":{"name":"m","generation":2},"status":` + status + `},
		"children":{},"related":{"infrastructureRef":` + related + `}}`
	req, err := wasmop.DecodeRequest([]byte(input))
	if err != nil {
		t.Fatal(err)
	}
	return &req
}

func condition(t *testing.T, status map[string]any) map[string]any {
	t.Helper()
	conditions, _ := status["conditions"].([]any)
	if len(conditions) != 1 {
		t.Fatalf("one condition, got %v", status["conditions"])
	}
	return conditions[0].(map[string]any)
}

func TestPhaseAndConditionFollowTheContract(t *testing.T) {
	infra := `{"apiVersion":"infra.example.com/v1beta2","kind":"CloudMachine","metadata":{"name":"c"}}`
	cases := []struct {
		related, phase, reason, message string
		ready                           bool
	}{
		{`{"object":null,"objects":[],"contract":{},"missing":["ready"],"reason":"CloudMachine c not found"}`,
			"Pending", "ObjectDoesNotExist", "CloudMachine c not found", false},
		{`{"object":` + infra + `,"objects":[],"contract":{},"missing":["ready"]}`,
			"Provisioning", "NotReady", "CloudMachine/c (infra.example.com/v1beta2, no contract path)", false},
		{`{"object":` + infra + `,"objects":[],"contract":{"ready":true},"missing":[],"matched":{"ready":"$.status.initialization.provisioned"}}`,
			"Provisioned", "Ready", "CloudMachine/c (infra.example.com/v1beta2, $.status.initialization.provisioned)", true},
	}
	for _, c := range cases {
		out := machine(request(t, `{}`, c.related), now)
		status := out.Status.(map[string]any)
		if status["phase"] != c.phase {
			t.Errorf("%s: phase %v", c.related, status["phase"])
		}
		if got := status["initialization"].(map[string]any)["infrastructureProvisioned"]; got != c.ready {
			t.Errorf("%s: infrastructureProvisioned %v", c.related, got)
		}
		cond := condition(t, status)
		if cond["type"] != "InfrastructureReady" || cond["reason"] != c.reason || cond["message"] != c.message ||
			cond["status"] != string(wasmop.StatusOf(c.ready)) || cond["lastTransitionTime"] != now ||
			cond["observedGeneration"] != int64(2) {
			t.Errorf("%s: condition %v", c.related, cond)
		}
		if len(out.Children) != 1 {
			t.Errorf("one bootstrap ConfigMap, got %v", out.Children)
		}
		if got := len(out.Events); (got == 1) != c.ready {
			t.Errorf("%s: an InfrastructureReady Event only when it became ready, got %v", c.related, out.Events)
		}
	}
}

// A steady state writes the same status again: the transition time is kept, and no Event.
func TestASteadyStateKeepsItsTransitionTime(t *testing.T) {
	infra := `{"apiVersion":"infra.example.com/v1beta1","kind":"DockerMachine","metadata":{"name":"d"}}`
	status := `{"initialization":{"infrastructureProvisioned":true},"conditions":[{"type":"InfrastructureReady",
		"status":"True","reason":"Ready","message":"x","lastTransitionTime":"2026-01-01T00:00:00Z"}]}`
	out := machine(request(t, status, `{"object":`+infra+`,"objects":[],"contract":{"ready":true},"missing":[],
		"matched":{"ready":"$.status.ready"}}`), now)
	cond := condition(t, out.Status.(map[string]any))
	if cond["lastTransitionTime"] != "2026-01-01T00:00:00Z" {
		t.Errorf("kept: %v", cond)
	}
	if !strings.Contains(cond["message"].(string), "$.status.ready") || len(out.Events) != 0 {
		t.Errorf("%v %v", cond, out.Events)
	}
}
