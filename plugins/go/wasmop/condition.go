package wasmop

import "time"

// ConditionStatus is "True", "False" or "Unknown".
type ConditionStatus string

// Condition statuses.
const (
	ConditionTrue    ConditionStatus = "True"
	ConditionFalse   ConditionStatus = "False"
	ConditionUnknown ConditionStatus = "Unknown"
)

// StatusOf is ConditionTrue or ConditionFalse.
func StatusOf(b bool) ConditionStatus {
	if b {
		return ConditionTrue
	}
	return ConditionFalse
}

// Condition is one desired status condition (metav1.Condition without the bookkeeping).
type Condition struct {
	Type    string
	Status  ConditionStatus
	Reason  string
	Message string
}

// Conditions is the status.conditions list to write: desired in order, each with
// observedGeneration (the parent's generation) and lastTransitionTime. As in apimachinery's
// meta.SetStatusCondition, the time is kept from the parent's current status unless the
// condition is new or its status changed; only then is now used. So an unchanged set of
// conditions comes out exactly as it went in, and a steady state writes nothing.
// desired is the complete set this plugin owns; others are dropped.
func Conditions(req *ReconcileRequest, desired []Condition, now string) []any {
	current := req.Conditions()
	generation := req.Generation()
	out := make([]any, 0, len(desired))
	for _, c := range desired {
		t := now
		for _, p := range current {
			if Get(p, "type") != c.Type {
				continue
			}
			if kept, ok := AsString(Get(p, "lastTransitionTime")); ok && Get(p, "status") == string(c.Status) {
				t = kept
			}
			break
		}
		out = append(out, map[string]any{
			"type":               c.Type,
			"status":             string(c.Status),
			"reason":             c.Reason,
			"message":            c.Message,
			"observedGeneration": generation,
			"lastTransitionTime": t,
		})
	}
	return out
}

// Now is the current UTC time as RFC 3339 (2026-11-22T23:22:44Z), for Conditions. It reads
// the WASI clock in a plugin (the host enables WASI).
func Now() string { return time.Now().UTC().Format(time.RFC3339) }
