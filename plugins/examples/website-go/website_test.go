package main

import (
	"encoding/json"
	"os"
	"testing"

	"wasmop.dev/plugins/go/wasmop"
)

// goldenCase is one entry of testdata/cases.json, recorded from the Rust example.
type goldenCase struct {
	Name     string          `json:"name"`
	Export   string          `json:"export"`
	Request  json.RawMessage `json:"request"`
	Response *string         `json:"response"`
	Error    *string         `json:"error"`
}

func TestEveryGoldenCaseGivesExactlyTheRustBytes(t *testing.T) {
	raw, err := os.ReadFile("testdata/cases.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Cases []goldenCase `json:"cases"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Cases) < 10 {
		t.Fatalf("the golden file lost cases: %d", len(doc.Cases))
	}
	exports := map[string]wasmop.Handler{"reconcile": reconcile, "finalize": finalize}
	for _, c := range doc.Cases {
		t.Run(c.Name, func(t *testing.T) {
			h, ok := exports[c.Export]
			if !ok {
				t.Fatalf("unknown export %q", c.Export)
			}
			got, err := wasmop.CallJSON(c.Request, h)
			switch {
			case c.Response != nil && err == nil:
				if string(got) != *c.Response {
					t.Errorf("response differs from Rust:\n got  %s\n want %s", got, *c.Response)
				}
			case c.Error != nil && err != nil:
				if err.Error() != *c.Error {
					t.Errorf("error %q, want %q", err, *c.Error)
				}
			default:
				t.Errorf("got (%s, %v), want response %v error %v", got, err, c.Response != nil, c.Error != nil)
			}
		})
	}
}

func TestASteadyStateReconcileEmitsNoEventsAndIsReady(t *testing.T) {
	req := &wasmop.ReconcileRequest{Object: map[string]any{
		"metadata": map[string]any{"name": "site"},
		"spec":     map[string]any{"replicas": 2},
	}}
	first, err := reconcile(req)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Events) != 1 {
		t.Fatalf("a new Deployment is one Created event, got %v", first.Events)
	}
	dep := first.Children[0].(map[string]any)
	dep["status"] = map[string]any{"availableReplicas": 2}
	req.Children = map[string]map[string]any{"Deployment.apps/v1": {"site": dep}}
	again, err := reconcile(req)
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Events) != 0 || wasmop.Get(again.Status, "phase") != "Ready" {
		t.Errorf("steady state: events %v, status %v", again.Events, again.Status)
	}
}
