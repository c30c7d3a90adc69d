package wasmop

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestMarshalWritesWhatSerdeJSONWrites(t *testing.T) {
	cases := []struct {
		name string
		in   any
		want string
	}{
		{"html is not escaped", map[string]any{"h": "<a href=\"x\">&</a>"}, `{"h":"<a href=\"x\">&</a>"}`},
		{"line separators are not escaped", "a\u2028b\u2029c", "\"a\u2028b\u2029c\""},
		{"an escaped backslash before u2028 stays", `\u2028`, `"\\u2028"`},
		{"control characters use short or lowercase escapes", "\b\f\n\r\t\x01", `"\b\f\n\r\t\u0001"`},
		{"map keys are sorted", map[string]any{"b": 1, "a": 2}, `{"a":2,"b":1}`},
		{"json numbers keep their literal", map[string]any{"n": json.Number("2.0")}, `{"n":2.0}`},
		{"empty response keeps children", ReconcileResponse{}, `{"children":[]}`},
		{"finalized response", Finalized(), `{"children":[],"finalized":true}`},
		{"response fields in Rust order", ReconcileResponse{Finalized: true, Status: 1, Events: []Event{{Type: EventTypeNormal, Reason: "R", Message: "m"}}},
			`{"children":[],"status":1,"events":[{"type":"Normal","reason":"R","message":"m"}],"finalized":true}`},
		{"nested struct types keep their own rules", ReconcileRequest{Related: map[string]Related{"x": {}}},
			`{"abiVersion":"","controller":{"name":"","namespace":"","config":null},"object":null,"children":{},"related":{"x":{"object":null,"objects":[],"contract":{},"missing":[]}},"finalizing":false}`},
	}
	for _, c := range cases {
		got, err := Marshal(c.in)
		if err != nil || string(got) != c.want {
			t.Errorf("%s: got %s (%v), want %s", c.name, got, err, c.want)
		}
	}
}

func TestFieldsReportTheFullPathOfAWrongType(t *testing.T) {
	req, err := DecodeRequest([]byte(`{"abiVersion":"wasmop.dev/v1alpha1","controller":{"name":"c","namespace":"n","config":{"replicas":"x"}},
		"object":{"metadata":{"name":"site","generation":3},"spec":{"replicas":-1,"big":18446744073709551615,"float":2.0,"tls":{"on":"yes"}}},
		"related":{"infra":{"contract":{"ready":"no"}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	spec := req.Spec()
	checks := []struct {
		err  error
		want string
	}{
		{second(spec.Uint64("replicas")), "spec.replicas must be a non-negative integer"},
		{second(spec.Uint64("float")), "spec.float must be a non-negative integer"},
		{second(spec.Fields("tls").Bool("on")), "spec.tls.on must be true or false"},
		{second(req.Config().Uint64("replicas")), "WasmController spec.plugin.config.replicas must be a non-negative integer"},
		{second(req.Contract("infra").Bool("ready")), "related.infra.contract.ready must be true or false"},
	}
	for _, c := range checks {
		var fe *FieldError
		if !errors.As(c.err, &fe) || c.err.Error() != c.want {
			t.Errorf("got %v, want %q", c.err, c.want)
		}
	}
	if big, ok, err := spec.Uint64("big"); big != 18446744073709551615 || !ok || err != nil {
		t.Errorf("big integers must survive decoding: %v %v %v", big, ok, err)
	}
	if _, ok, err := spec.Uint64("absent"); ok || err != nil {
		t.Errorf("absent fields are not present and not errors: %v %v", ok, err)
	}
	if req.Name() != "site" || req.Generation() != 3 {
		t.Errorf("metadata: %q %d", req.Name(), req.Generation())
	}
}

func second[T any](_ T, _ bool, err error) error { return err }

func TestDecodeNamesTheFieldAndTheReason(t *testing.T) {
	f := NewFields("spec", map[string]any{"ports": []any{json.Number("80"), "x"}})
	var ports []int
	_, err := f.Decode("ports", &ports)
	if err == nil || !strings.HasPrefix(err.Error(), "spec.ports is not valid: ") {
		t.Errorf("got %v", err)
	}
}

func TestConditionsKeepTheTransitionTimeUnlessTheStatusChanges(t *testing.T) {
	const old, now = "2026-01-01T00:00:00Z", "2026-11-22T12:00:00Z"
	req := &ReconcileRequest{Object: map[string]any{
		"metadata": map[string]any{"generation": json.Number("4")},
		"status": map[string]any{"conditions": []any{
			map[string]any{"type": "Ready", "status": "True", "lastTransitionTime": old},
		}},
	}}
	cases := []struct {
		c    Condition
		want string
	}{
		{Condition{"Ready", ConditionTrue, "Other", "new message"}, old},
		{Condition{"Ready", ConditionFalse, "Down", "x"}, now},
		{Condition{"Synced", StatusOf(true), "New", "x"}, now},
	}
	for _, c := range cases {
		out := Conditions(req, []Condition{c.c}, now)
		if got := Get(out[0], "lastTransitionTime"); got != c.want {
			t.Errorf("%+v: lastTransitionTime %v, want %v", c.c, got, c.want)
		}
		if got := Get(out[0], "observedGeneration"); got != int64(4) {
			t.Errorf("observedGeneration %v", got)
		}
	}
}

func TestASteadyStateConditionListIsByteIdentical(t *testing.T) {
	desired := []Condition{{"Ready", ConditionTrue, "Up", "ok"}}
	first := Conditions(&ReconcileRequest{}, desired, "2026-01-01T00:00:00Z")
	b1, _ := Marshal(first)
	req, _ := DecodeRequest([]byte(`{"abiVersion":"","controller":{"name":"","namespace":""},"object":{"status":{"conditions":` + string(b1) + `}}}`))
	b2, _ := Marshal(Conditions(&req, desired, "2026-11-22T00:00:00Z"))
	if string(b1) != string(b2) {
		t.Errorf("steady state changed:\n%s\n%s", b1, b2)
	}
}

func TestChildBuilderAndResponseHelpers(t *testing.T) {
	c := NewChild("v1", "ConfigMap", "site-content").
		Labels(map[string]string{"b": "2", "a": "1"}).
		Annotation("note", "x").
		Field("data", map[string]any{"index.html": "<p>"})
	var r ReconcileResponse
	r.PushChild(c).Normal("Created", "created "+c.Reference()).Warning("Slow", "slow")
	got, _ := Marshal(r)
	want := `{"children":[{"apiVersion":"v1","data":{"index.html":"<p>"},"kind":"ConfigMap","metadata":{"annotations":{"note":"x"},"labels":{"a":"1","b":"2"},"name":"site-content"}}],` +
		`"events":[{"type":"Normal","reason":"Created","message":"created ConfigMap/site-content"},{"type":"Warning","reason":"Slow","message":"slow"}]}`
	if string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	req := &ReconcileRequest{Children: map[string]map[string]any{"ConfigMap.v1": {"site-content": map[string]any{}}}}
	if _, ok := req.Existing(c); !ok {
		t.Error("Existing must find the current child of a desired one")
	}
}

func TestCallJSONReportsBadInputAndHandlerErrorsVerbatim(t *testing.T) {
	h := func(*ReconcileRequest) (ReconcileResponse, error) {
		return ReconcileResponse{}, errors.New("no can do")
	}
	if _, err := CallJSON([]byte(`{"abiVersion":"","controller":{"name":"","namespace":""},"object":null}`), h); err == nil || err.Error() != "no can do" {
		t.Errorf("got %v", err)
	}
	_, err := CallJSON([]byte(`[]`), h)
	var bad *BadRequestError
	if !errors.As(err, &bad) || !strings.Contains(err.Error(), "ReconcileRequest") {
		t.Errorf("got %v", err)
	}
}
