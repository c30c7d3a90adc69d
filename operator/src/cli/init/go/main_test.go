package main

import (
	"testing"

	"wasmop.dev/plugins/go/wasmop"
)

func request(spec map[string]any) *wasmop.ReconcileRequest {
	return &wasmop.ReconcileRequest{Object: map[string]any{
		"metadata": map[string]any{"name": "hi", "generation": 1},
		"spec":     spec,
	}}
}

func TestTheStatusCarriesTheMessage(t *testing.T) {
	out, err := reconcile(request(map[string]any{"message": "bonjour"}))
	if err != nil {
		t.Fatal(err)
	}
	if got := out.Status.(map[string]any)["message"]; got != "bonjour" {
		t.Fatalf("status.message = %v", got)
	}
}

func TestAMessageThatIsNotAStringNamesTheField(t *testing.T) {
	_, err := reconcile(request(map[string]any{"message": 42}))
	if err == nil || err.Error() != "spec.message must be a string" {
		t.Fatalf("err = %v", err)
	}
}
